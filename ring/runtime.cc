// Runtime start-up, stop and teardown.
#include "ring/runtime.hh"

#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>

namespace derp::ring {

std::uint32_t default_shard_count() noexcept {
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 1 ? static_cast<std::uint32_t>(online - 1) : 1;
}

runtime::runtime(runtime_config config) : _config(std::move(config)) {}

runtime::~runtime() {
    request_stop();
    wait();
    if (_signal_fd >= 0) ::close(_signal_fd);
    for (std::uint32_t t = 0; _links && t < thread_count(); ++t)
        if (_links[t].wake_eventfd >= 0) ::close(_links[t].wake_eventfd);
}

void runtime::on_signal(void* context, int signal_number) noexcept {
    auto* self = static_cast<runtime*>(context);
    if (signal_number == SIGHUP) {
        if (self->_config.on_reload) {
            log(log_level::info, "SIGHUP: reloading");
            self->_config.on_reload();
        } else {
            log(log_level::info, "SIGHUP: nothing to reload in this configuration");
        }
        return;
    }
    if (self->_config.drain_timeout_ns > 0 && self->request_drain(self->_config.drain_timeout_ns)) {
        log(log_level::info, "{}: draining for at most {} ms (closing listeners; clients are told to reconnect "
            "elsewhere); signal again to stop at once", strsignal(signal_number), self->_config.drain_timeout_ns / 1'000'000);
        return;
    }
    log(log_level::info, "{}: stopping (closing listeners and connections)", strsignal(signal_number));
    self->request_stop();
}

bool runtime::request_drain(std::int64_t timeout_ns) noexcept {
    if (!_links) return false;
    const std::uint64_t deadline = monotonic_ns() + static_cast<std::uint64_t>(timeout_ns > 0 ? timeout_ns : 0);
    bool first = true;
    for (std::uint32_t t = 0; t < thread_count(); ++t) {
        if (_links[t].stop_requested.load(std::memory_order_acquire)) first = false;
        std::uint64_t none = 0;
        if (!_links[t].drain_deadline_ns.compare_exchange_strong(none, deadline, std::memory_order_acq_rel)) first = false;
    }
    wake_all();
    return first;
}

result<std::unique_ptr<runtime>, std::string> runtime::start(runtime_config config,
                                                             service_factory shard_services,
                                                             service_factory admin_service) {
    DERP_ASSERT(config.shard_count >= 1 && config.shard_count < 1024);
    // A write to a socket the peer has reset raises SIGPIPE; io_uring writes have no
    // MSG_NOSIGNAL, so the process ignores it and takes -EPIPE as a value.
    ::signal(SIGPIPE, SIG_IGN);

    std::unique_ptr<runtime> rt(new runtime(std::move(config)));
    runtime_config& cfg = rt->_config;
    const std::uint32_t threads = cfg.shard_count + 1;
    const std::uint32_t admin = cfg.shard_count;

    // Listeners first, on this thread: a port in use is a start-up error before any thread runs.
    std::vector<std::vector<int>> listener_fds(cfg.shard_count);
    std::vector<std::uint8_t> listener_tags;
    for (std::size_t i = 0; i < cfg.listen.size(); ++i) {
        auto& address = cfg.listen[i];
        listener_tags.push_back(i < cfg.listen_tags.size() ? cfg.listen_tags[i] : 0);
        auto fds = open_tcp_listeners(address, cfg.shard_count, cfg.listen_options);
        if (!fds) {
            for (auto& per_shard : listener_fds)
                for (int fd : per_shard) ::close(fd);
            return unexpected(fds.error());
        }
        for (std::uint32_t s = 0; s < cfg.shard_count; ++s) listener_fds[s].push_back(fds.value()[s]);
    }

    std::vector<int> admin_fds;
    for (auto& address : cfg.admin_listen) {
        auto fds = open_tcp_listeners(address, 1, cfg.listen_options);
        if (!fds) {
            for (auto& per_shard : listener_fds)
                for (int f : per_shard) ::close(f);
            for (int f : admin_fds) ::close(f);
            return unexpected(fds.error());
        }
        admin_fds.push_back(fds.value().front());
    }
    std::vector<int> udp_fds;
    for (auto& address : cfg.udp_listen) {
        auto fd = open_udp_socket(address, cfg.listen_options.join_existing);
        if (!fd) {
            for (auto& per_shard : listener_fds)
                for (int f : per_shard) ::close(f);
            for (int f : admin_fds) ::close(f);
            for (int f : udp_fds) ::close(f);
            return unexpected(fd.error());
        }
        udp_fds.push_back(fd.value());
    }

    if (cfg.handle_signals) {
        // Block the signals in this thread before any thread starts, so every thread inherits
        // the mask and only the admin thread's signalfd sees them.
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGHUP);
        pthread_sigmask(SIG_BLOCK, &set, nullptr);
        rt->_signal_fd = signalfd(-1, &set, SFD_CLOEXEC);
        if (rt->_signal_fd < 0) {
            for (auto& per_shard : listener_fds)
                for (int fd : per_shard) ::close(fd);
            return unexpected(fmt::format("signalfd: {}", std::strerror(errno)));
        }
    }

    rt->_links = std::make_unique<thread_link[]>(threads);
    rt->_counters = std::make_unique<shard_counters[]>(threads);
    for (std::uint32_t t = 0; t < threads; ++t) {
        rt->_links[t].wake_eventfd = eventfd(0, EFD_CLOEXEC);
        if (rt->_links[t].wake_eventfd < 0) {
            for (auto& per_shard : listener_fds)
                for (int fd : per_shard) ::close(fd);
            return unexpected(fmt::format("eventfd: {}", std::strerror(errno)));
        }
    }
    rt->_rings.resize(static_cast<std::size_t>(threads) * threads);
    for (std::uint32_t from = 0; from < threads; ++from)
        for (std::uint32_t to = 0; to < threads; ++to)
            if (from != to)
                rt->_rings[from * threads + to] = std::make_unique<spsc_ring<message>>(cfg.ring_capacity);

    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    const int cpus = online > 0 ? static_cast<int>(online) : 1;
    std::span<thread_link> links(rt->_links.get(), threads);
    for (std::uint32_t t = 0; t < threads; ++t) {
        shard_config sc = cfg.shard_defaults;
        sc.index = t;
        sc.thread_count = threads;
        sc.is_admin = t == admin;
        // Shard i on core i; the admin thread on the last core, which the default shard count
        // leaves to it (both shifted by cpu_offset, for a load generator beside a server).
        const int offset = static_cast<int>(cfg.cpu_offset % static_cast<std::uint32_t>(cpus));
        sc.cpu = !cfg.pin_threads ? -1
                 : sc.is_admin    ? (offset + cpus - 1) % cpus
                                  : (offset + static_cast<int>(t)) % cpus;
        if (sc.is_admin) {
            sc.conn_slots = cfg.admin_conn_slots;
            sc.recv_buffer_count = 64;
            sc.send_buffer_count = 64;
            sc.signal_fd = rt->_signal_fd;
            sc.udp_fds = udp_fds;
            sc.listen_fds = admin_fds;
        } else {
            sc.listen_fds = std::move(listener_fds[t]);
            sc.listen_tags = listener_tags;
        }
        std::vector<spsc_ring<message>*> outbound(threads, nullptr), inbound(threads, nullptr);
        for (std::uint32_t o = 0; o < threads; ++o) {
            if (o == t) continue;
            outbound[o] = rt->_rings[t * threads + o].get();
            inbound[o] = rt->_rings[o * threads + t].get();
        }
        rt->_shards.push_back(std::make_unique<shard>(std::move(sc), links, std::move(outbound),
                                                      std::move(inbound), rt->_counters[t]));
        if (t == admin && cfg.handle_signals)
            rt->_shards.back()->set_signal_handler(&runtime::on_signal, rt.get());
    }

    // Each thread creates its own ring (SINGLE_ISSUER), reports, and waits for the go-ahead so
    // that no shard posts to a peer whose ring does not exist yet.
    struct start_gate {
        std::mutex mutex;
        std::condition_variable changed;
        std::uint32_t reported = 0;
        bool decided = false;
        bool go = false;
        std::vector<std::string> errors;
    };
    auto gate = std::make_shared<start_gate>();
    gate->errors.resize(threads);
    for (std::uint32_t t = 0; t < threads; ++t) {
        shard* sh = rt->_shards[t].get();
        service_factory factory = t == admin ? admin_service : shard_services;
        rt->_threads.emplace_back([sh, gate, t, factory, admin]() {
            // Named so that an operator (top -H, perf) and a test (ptrace of one shard) can tell
            // the threads apart: "shard-N", "admin".
            const std::string name = t == admin ? std::string("admin") : fmt::format("shard-{}", t);
            pthread_setname_np(pthread_self(), name.c_str());
            auto ready = sh->init();
            if (ready && factory) sh->set_service(factory(*sh));
            {
                std::lock_guard lock(gate->mutex);
                if (!ready) gate->errors[t] = ready.error();
                ++gate->reported;
            }
            gate->changed.notify_all();
            bool go = false;
            {
                std::unique_lock lock(gate->mutex);
                gate->changed.wait(lock, [&] { return gate->decided; });
                go = gate->go;
            }
            if (go) sh->run();
        });
    }
    std::string failure;
    {
        std::unique_lock lock(gate->mutex);
        gate->changed.wait(lock, [&] { return gate->reported == threads; });
        for (std::uint32_t t = 0; t < threads; ++t)
            if (!gate->errors[t].empty() && failure.empty()) failure = gate->errors[t];
        gate->decided = true;
        gate->go = failure.empty();
    }
    gate->changed.notify_all();
    if (!failure.empty()) {
        rt->wait();
        return unexpected(std::move(failure));
    }
    return rt;
}

void runtime::request_stop() noexcept {
    if (!_links) return;
    for (std::uint32_t t = 0; t < thread_count(); ++t) {
        _links[t].stop_requested.store(true, std::memory_order_release);
        const std::uint64_t one = 1;
        // The eventfd read armed in every loop wakes the thread; a failed write means the
        // counter is saturated, which already wakes it.
        [[maybe_unused]] auto n = ::write(_links[t].wake_eventfd, &one, sizeof one);
    }
}

void runtime::wake_all() noexcept {
    if (!_links) return;
    for (std::uint32_t t = 0; t < thread_count(); ++t) {
        const std::uint64_t one = 1;
        [[maybe_unused]] auto n = ::write(_links[t].wake_eventfd, &one, sizeof one);
    }
}

void runtime::wake(std::uint32_t thread) noexcept {
    if (!_links || thread >= thread_count()) return;
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(_links[thread].wake_eventfd, &one, sizeof one);
}

void runtime::wait() noexcept {
    if (_joined) return;
    for (auto& t : _threads)
        if (t.joinable()) t.join();
    _joined = true;
    // Every thread is gone: hand undelivered messages to their destination's service so that
    // whatever they carry is released.
    const std::uint32_t threads = thread_count();
    if (_rings.size() != static_cast<std::size_t>(threads) * threads) return;  // never started
    for (std::uint32_t from = 0; from < threads; ++from) {
        for (std::uint32_t to = 0; to < threads; ++to) {
            auto& ring = _rings[from * threads + to];
            if (!ring) continue;
            ring->publish();
            while (const message* m = ring->pop()) {
                const message copy = *m;
                if (copy.kind >= message_kind_service_base)
                    _shards[to]->discard_pending(copy);
            }
            ring->release();
        }
    }
}

}  // namespace derp::ring
