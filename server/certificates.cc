// Certificate loading and reloading for derpd's TLS listener (see certificates.hh).
#include "server/certificates.hh"

#include <sys/stat.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#include "core/http_endpoints.hh"
#include "ring/log.hh"
#include "server/files.hh"

namespace derp::server {

using ring::log_level;

std::string default_certdir() {
    std::string cache;
    if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg) cache = xdg;
    else if (const char* home = std::getenv("HOME"); home != nullptr && *home) cache = std::string(home) + "/.cache";
    if (cache.empty()) return {};
    return cache + "/tailscale/derper-certs";
}

std::string manual_cert_path(const std::string& certdir, const std::string& hostname, const char* extension) {
    std::string safe;
    for (char ch : hostname)
        if (std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '-') safe += ch;
    return fmt::format("{}/{}{}", certdir, safe, extension);
}

result<certificate_setup, std::string> load_manual_certificate(const std::string& certdir, const std::string& hostname,
                                                               const node_key& server_key) {
    certificate_setup setup;
    setup.identity.hostname = hostname;
    setup.identity.cert_path = manual_cert_path(certdir, hostname, ".crt");
    setup.identity.key_path = manual_cert_path(certdir, hostname, ".key");
    const bool ip_hostname = parse_ip(hostname).has_value();
    // lstat: a symlink is something that is there, even one that leads nowhere, never a
    // missing file to create through it (reading through a symlink stays fine: certificates
    // are often links into another tool's directory).
    auto missing = [](const std::string& path) {
        struct stat st{};
        return ::lstat(path.c_str(), &st) != 0 && errno == ENOENT;
    };
    const bool cert_missing = missing(setup.identity.cert_path);
    const bool key_missing = missing(setup.identity.key_path);
    if (cert_missing && key_missing && ip_hostname) {
        if (auto made = make_private_directory(certdir); !made) return unexpected("-certdir: " + made.error());
        auto written = tls::write_self_signed(hostname, setup.identity.cert_path, setup.identity.key_path);
        if (!written) return unexpected(written.error());
        setup.self_signed_written = true;
    } else if (cert_missing || key_missing) {
        return unexpected(fmt::format(
            "-certmode manual: {} not found (want {} and {}; a self-signed certificate is only made for an IP -hostname)",
            cert_missing ? setup.identity.cert_path : setup.identity.key_path, setup.identity.cert_path,
            setup.identity.key_path));
    }
    auto meta = tls::make_meta_certificate(server_key);
    if (!meta) return unexpected(meta.error());
    setup.identity.meta_cert_der = std::move(meta.value());
    auto ctx = tls::context::make_server(setup.identity);
    if (!ctx) return unexpected(ctx.error());
    setup.context = std::move(ctx.value());
    if (ip_hostname) {
        std::string hex;
        for (auto b : setup.context->leaf_sha256()) hex += fmt::format("{:02x}", b);
        setup.derpmap_node = fmt::format(
            R"({{"Name":"custom","RegionID":900,"HostName":"{}","CertName":"sha256-raw:{}"}})", hostname, hex);
    }
    return setup;
}

certificate_reloader::certificate_reloader(tls::server_identity identity, tls::context_slot& slot)
    : _identity(std::move(identity)), _slot(slot), _last_stamp(stamp()) {}

certificate_reloader::~certificate_reloader() {
    {
        std::lock_guard lock(_mutex);
        _stopping = true;
    }
    _wake.notify_all();
    if (_poller.joinable()) _poller.join();
}

std::string certificate_reloader::stamp() const {
    std::string text;
    for (const auto* path : {&_identity.cert_path, &_identity.key_path}) {
        struct stat st{};
        if (::stat(path->c_str(), &st) != 0) {
            text += "missing;";
            continue;
        }
        text += fmt::format("{}:{}:{}.{};", st.st_ino, st.st_size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    }
    return text;
}

bool certificate_reloader::reload(const char* why) noexcept {
    std::lock_guard lock(_mutex);
    _last_stamp = stamp();
    auto ctx = tls::context::make_server(_identity);
    if (!ctx) {
        ring::log(log_level::warn, "certificate reload ({}) failed, keeping the current certificate: {}", why,
                  ctx.error());
        if (_health) _health("certificate reload failed: " + ctx.error());
        return false;
    }
    std::string hex;
    for (auto b : ctx.value()->leaf_sha256()) hex += fmt::format("{:02x}", b);
    _slot.current.store(std::move(ctx.value()));
    _reloads.fetch_add(1, std::memory_order_relaxed);
    ring::log(log_level::info, "certificate reloaded ({}): {} sha256 {}", why, _identity.cert_path, hex);
    if (_health) _health({});
    return true;
}

void certificate_reloader::start_polling(std::int64_t interval_ns) {
    _poller = std::thread([this, interval_ns] {
        std::unique_lock lock(_mutex);
        while (!_stopping) {
            _wake.wait_for(lock, std::chrono::nanoseconds(interval_ns));
            if (_stopping) break;
            const std::string now = stamp();
            if (now == _last_stamp) continue;
            lock.unlock();
            reload("the files changed");
            lock.lock();
        }
    });
}

}  // namespace derp::server
