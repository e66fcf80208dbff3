// The TLS layer between a shard and its service (crypto/tls_layer.hh). The order of things
// matters for kTLS: TX may only go to the kernel once every handshake byte OpenSSL wrote has
// been sent (on_writable is only called with no send in flight, so the next call is that
// moment), and RX only at a record boundary with no receive completion outstanding (the shard
// pauses the multishot recv and tells us when its last completion has been delivered).
#include "crypto/tls_layer.hh"

#include <openssl/ssl.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace derp::tls {

using ring::conn_id;
using ring::log_level;

namespace {
// Room for a record's header, inner type, padding-free AEAD tag and explicit nonce: 5 + 8 + 16
// in TLS 1.2 GCM, 5 + 1 + 16 in 1.3; rounded up.
constexpr std::size_t record_overhead_bytes = 32;
constexpr std::uint8_t rx_attempts_max = 8;

std::string_view path_name(bool tx, bool rx, bool records) {
    if (tx && rx) return "ktls";
    if (tx) return "ktls-tx";
    return records ? "userspace-records" : "userspace";
}
}  // namespace

tls_layer::tls_layer(ring::shard& sh, std::unique_ptr<ring::service> inner, tls_layer_config config,
                     tls_counters& counters)
    : _shard(sh), _inner(std::move(inner)), _config(config), _counters(counters),
      _places(config.handshakes_in_flight_max, config.handshakes_per_source_max),
      _plain_out(sh.send_pool().buffer_bytes()) {}

tls_layer::~tls_layer() = default;

tls_layer::conn_tls* tls_layer::find(conn_id conn) noexcept {
    if (conn.slot >= _conns.size()) return nullptr;
    conn_tls& st = _conns[conn.slot];
    return st.active && st.gen == conn.gen ? &st : nullptr;
}

const tls_layer::conn_tls* tls_layer::find(conn_id conn) const noexcept {
    if (conn.slot >= _conns.size()) return nullptr;
    const conn_tls& st = _conns[conn.slot];
    return st.active && st.gen == conn.gen ? &st : nullptr;
}

bool tls_layer::is_tls(conn_id conn) const noexcept { return find(conn) != nullptr; }

std::uint16_t tls_layer::tls_version(conn_id conn) const noexcept {
    const conn_tls* st = find(conn);
    return st == nullptr ? 0 : st->version;
}

std::string_view tls_layer::path(conn_id conn) const noexcept {
    const conn_tls* st = find(conn);
    if (st == nullptr) return "plain";
    return path_name(st->ktls_tx, st->ktls_rx, st->records != nullptr);
}

std::optional<node_key> tls_layer::peer_meta_key(conn_id conn) const noexcept {
    const conn_tls* st = find(conn);
    return st == nullptr || !st->tls ? std::nullopt : st->tls->peer_meta_key();
}

std::int64_t tls_layer::peer_leaf_not_after_unix(conn_id conn) const noexcept {
    const conn_tls* st = find(conn);
    return st == nullptr || !st->tls ? 0 : st->tls->peer_leaf_not_after_unix();
}

void tls_layer::on_accept(conn_id conn, const sockaddr_storage& peer) noexcept {
    if (!_config.client && _shard.listener_tag(conn) == _config.tls_listener_tag && _config.contexts != nullptr) {
        if (_conns.size() <= conn.slot) _conns.resize(conn.slot + 1);
        conn_tls& st = _conns[conn.slot];
        st = conn_tls{};
        st.gen = conn.gen;
        st.active = true;
        // The handshake deadline runs from the accept, waiting included.
        _shard.arm_timer(conn, timer_handshake, _shard.now_ns() + static_cast<std::uint64_t>(_config.handshake_timeout_ns));
        st.waiting = true;  // the session starts with the ClientHello's first record
        st.source = handshake_source_of(peer);
    }
    _inner->on_accept(conn, peer);
}

bool tls_layer::client_hello_incomplete(std::span<const std::uint8_t> bytes) noexcept {
    // A TLS record: type (22 = handshake), version 3.x, length (u16 BE, at most 2^14 for a
    // plaintext record, RFC 8446 5.1), then the fragment.
    constexpr std::size_t header_bytes = 5;
    constexpr std::size_t fragment_bytes_max = 1u << 14;
    if (bytes[0] != 22 || (bytes.size() >= 2 && bytes[1] != 3)) return false;
    if (bytes.size() < header_bytes) return true;
    const std::size_t fragment = std::size_t{bytes[3]} << 8 | bytes[4];
    if (fragment == 0 || fragment > fragment_bytes_max) return false;
    return bytes.size() < header_bytes + fragment;
}

void tls_layer::start_handshake(conn_tls& st) noexcept {
    const bool want_ktls = _config.kernel_has_ktls && _config.ktls != ktls_mode::off;
    st.tls = std::make_unique<session>(_config.contexts->current.load(), want_ktls);
    // Without kTLS the record layer takes over behind the client's Finished.
    if (!want_ktls) st.tls->hand_off_records();
    st.in_flight = true;  // its place was counted by _places
}

void tls_layer::leave_handshake(conn_tls& st) noexcept {
    if (!st.in_flight) return;
    st.in_flight = false;
    _places.leave(st.source);
    admit_waiting();
}

void tls_layer::publish_places() noexcept {
    _counters.handshakes_in_flight.set(_places.in_flight());
    _counters.handshakes_waiting.set(_waiting_live);
}

void tls_layer::admit_waiting() noexcept {
    // Not re-entered: a replayed ClientHello may end its handshake at once (a failure), which
    // frees a place that this loop, still running, fills.
    if (_admitting) return;
    _admitting = true;
    const auto still_waiting = [this](conn_id c) {
        const conn_tls* w = find(c);
        return w != nullptr && w->queued;  // not closed (timed out) while it waited
    };
    while (const auto next = _places.next(still_waiting)) {
        const conn_id conn = *next;
        conn_tls* w = find(conn);
        w->waiting = false;
        w->queued = false;
        --_waiting_live;
        start_handshake(*w);
        if (w->waiting_paused) {
            w->waiting_paused = false;
            _shard.resume_recv(conn);
        }
        _shard.replay_input(conn);  // the ClientHello the shard kept while it waited
    }
    _admitting = false;
    publish_places();
}

void tls_layer::use_context(conn_id conn, std::shared_ptr<context> ctx) noexcept {
    if (_conns.size() <= conn.slot) _conns.resize(conn.slot + 1);
    conn_tls& st = _conns[conn.slot];
    st = conn_tls{};
    st.gen = conn.gen;
    st.connect_context = std::move(ctx);
}

void tls_layer::on_connect(conn_id conn, int error) noexcept {
    std::shared_ptr<context> chosen;
    if (conn.slot < _conns.size() && _conns[conn.slot].gen == conn.gen)
        chosen = std::move(_conns[conn.slot].connect_context);
    if (!chosen && _config.contexts != nullptr) chosen = _config.contexts->current.load();
    if (!_config.client || error != 0 || chosen == nullptr) {
        _inner->on_connect(conn, error);
        return;
    }
    if (_conns.size() <= conn.slot) _conns.resize(conn.slot + 1);
    conn_tls& st = _conns[conn.slot];
    st = conn_tls{};
    st.gen = conn.gen;
    st.active = true;
    st.tls = std::make_unique<session>(std::move(chosen), false);
    _shard.arm_timer(conn, timer_handshake, _shard.now_ns() + static_cast<std::uint64_t>(_config.handshake_timeout_ns));
    if (st.tls->start(st.cipher_out) == status::failed) {
        fail(conn, st, st.tls->error());
        return;
    }
    _shard.want_write(conn);
    // The service above hears of the connection once the handshake is done.
}

void tls_layer::fail(conn_id conn, conn_tls& st, std::string_view what) noexcept {
    if (st.version == 0) {
        leave_handshake(st);
        _counters.handshakes_failed.add();
        // The service above of an outgoing connection has not heard of it yet: tell it the
        // connection failed, and why in errno terms, before the close reaches it.
        if (_config.client) _inner->on_connect(conn, EPROTO);
    } else {
        _counters.records_failed.add();
    }
    if (const auto n = _fail_log.allow(_shard.now_ns()))
        ring::log(log_level::info, "shard {}: TLS {} on slot {}: {}{}", _shard.index(),
                  st.version == 0 ? "handshake failed" : "connection failed", conn.slot, what,
                  n > 1 ? fmt::format(" ({} similar before)", n - 1) : std::string());
    // Whatever alert OpenSSL wrote goes out before the close.
    if (!st.cipher_out.empty()) {
        _shard.want_write(conn);
        _shard.close_after_flush(conn);
    } else {
        _shard.close(conn);
    }
}

void tls_layer::settle_path(conn_id conn, conn_tls& st) noexcept {
    // Counted once, when both directions are decided; RX may still move into the kernel
    // later (at a later record boundary), which moves the connection from ktls-tx to ktls.
    if (st.ktls_tx_pending || st.rx_pause_pending) return;
    if (st.path_counted) {
        if (st.ktls_rx && st.ktls_tx && !st.counted_full) {
            _counters.path_ktls_tx.sub();
            _counters.path_ktls.add();
            st.counted_full = true;
        }
        return;
    }
    st.path_counted = true;
    if (st.ktls_tx && st.ktls_rx) {
        _counters.path_ktls.add();
        st.counted_full = true;
    } else if (st.ktls_tx) {
        _counters.path_ktls_tx.add();
    } else if (st.records) {
        _counters.path_userspace_records.add();
    } else {
        _counters.path_userspace.add();
    }
    ring::log(log_level::debug, "shard {}: slot {}: TLS path {}", _shard.index(), conn.slot,
              path_name(st.ktls_tx, st.ktls_rx, st.records != nullptr));
}

void tls_layer::handshake_done(conn_id conn, conn_tls& st) noexcept {
    _shard.cancel_timer(conn, timer_handshake);
    leave_handshake(st);
    _counters.handshakes_ok.add();
    st.version = st.tls->version();
    if (st.version == TLS1_3_VERSION) {
        _counters.version_tls13.add();
        _counters.open_tls13.add();
    } else {
        _counters.version_tls12.add();
        _counters.open_tls12.add();
    }
    if (!_config.client && st.tls->alpn() == "acme-tls/1") {
        // A TLS-ALPN-01 validation (RFC 8737 3): the challenge certificate was all it came
        // for; the validator closes after the handshake and nothing is served on it.
        _counters.acme_tls_alpn_handshakes.add();
        ring::log(log_level::info, "shard {}: TLS-ALPN-01 validation handshake for \"{}\" answered", _shard.index(),
                  st.tls->sni());
        if (st.cipher_out.empty()) {
            _shard.close(conn);
        } else {
            _shard.want_write(conn);
            _shard.close_after_flush(conn);
        }
        return;
    }
    // Whatever the service asked to send while the handshake ran waits for this moment.
    _shard.want_write(conn);
    if (_config.client) {
        ring::log(log_level::debug, "shard {}: TLS {} {} to slot {}", _shard.index(), st.tls->version_name(),
                  st.tls->cipher_name(), conn.slot);
        if (st.tls->state() == status::open) _inner->on_connect(conn, 0);
        return;
    }
    const bool try_ktls = _config.kernel_has_ktls && _config.ktls != ktls_mode::off && st.tls->state() == status::open;
    if (try_ktls) {
        // TX first: with nothing left to send (TLS 1.3) at once, otherwise after the last
        // handshake flight has been sent (TLS 1.2 ends with the server's Finished).
        st.ktls_tx_pending = true;
        const bool boundary = st.tls->at_record_boundary();
        st.rx_pause_pending = boundary;  // so that the path is counted once RX is decided too
        if (st.cipher_out.empty()) install_tx(conn, st);
        if (boundary && _shard.is_open(conn)) _shard.pause_recv(conn);
    }
    if (st.tls)
        ring::log(log_level::debug, "shard {}: TLS {} {} sni \"{}\" on slot {}: {}", _shard.index(),
                  st.tls->version_name(), st.tls->cipher_name(), st.tls->sni(), conn.slot,
                  try_ktls ? "kTLS pending" : "userspace records");
    if (!try_ktls && st.tls && st.tls->state() == status::open) start_records(conn, st);
    settle_path(conn, st);
    maybe_forget_secrets(st);
}

bool tls_layer::start_records(conn_id conn, conn_tls& st) noexcept {
    auto keys = st.tls->record_export();
    if (!keys) {
        ring::log(log_level::info, "shard {}: slot {}: TLS {} {}: no keys for the record layer; OpenSSL keeps the records",
                  _shard.index(), conn.slot, st.tls->version_name(), st.tls->cipher_name());
        return false;
    }
    auto layer = record_layer::make(*keys);
    if (!layer) {
        ring::log(log_level::info, "shard {}: slot {}: record layer: {}; OpenSSL keeps the records", _shard.index(),
                  conn.slot, layer.error());
        return false;
    }
    st.records = std::move(layer.value());
    // What OpenSSL wrote (a TLS 1.2 server's Finished) is in cipher_out already; nothing else
    // needs the SSL object: the session, its buffers and its handshake state go now.
    st.tls.reset();
    return true;
}

std::size_t tls_layer::records_data(conn_id conn, conn_tls& st, std::span<const std::uint8_t> bytes) noexcept {
    // Opened out of the (read-only) receive buffer into one scratch per shard thread: each
    // record's plaintext is at most its ciphertext, so bytes.size() and one record (the
    // partial one completed first) are room enough.
    thread_local std::vector<std::uint8_t> scratch;
    if (scratch.size() < bytes.size() + record_open_room) scratch.resize(bytes.size() + record_open_room);
    // A record the last read ended in is kept here (st.partial), not left to the shard: a
    // shard holding unconsumed input copies every later read behind it.
    std::size_t used = 0, plain_bytes = 0;
    opened stop;
    const bool had_output = !st.cipher_out.empty();
    auto open_at = [&](std::span<const std::uint8_t> in) {
        stop = st.records->open(in, scratch.data() + plain_bytes, st.cipher_out);
        if (stop.close == record_close::none) plain_bytes += stop.plain_bytes;
    };
    if (!st.partial.empty()) {
        // Its header first, then as much of its body as it still lacks.
        auto take = [&](std::size_t n) {
            n = std::min(n, bytes.size() - used);
            st.partial.append(reinterpret_cast<const char*>(bytes.data()) + used, n);
            used += n;
        };
        if (st.partial.size() < record_header_bytes) take(record_header_bytes - st.partial.size());
        if (st.partial.size() >= record_header_bytes) {
            const auto* h = reinterpret_cast<const std::uint8_t*>(st.partial.data());
            take(record_header_bytes + (std::size_t{h[3]} << 8 | h[4]) - st.partial.size());
            open_at({reinterpret_cast<const std::uint8_t*>(st.partial.data()), st.partial.size()});
            if (stop.close == record_close::none && stop.consumed > 0) std::string().swap(st.partial);
        }
    }
    if (st.partial.empty()) {
        while (used < bytes.size()) {
            open_at(bytes.subspan(used));
            if (stop.close != record_close::none || stop.consumed == 0) break;
            used += stop.consumed;
        }
        if (stop.close == record_close::none && used < bytes.size())
            st.partial.assign(reinterpret_cast<const char*>(bytes.data()) + used, bytes.size() - used);
    }
    used = bytes.size();
    if (plain_bytes > 0) {
        if (st.plain.empty()) {
            const std::size_t took = _inner->on_data(conn, {scratch.data(), plain_bytes});
            if (!_shard.is_open(conn)) return bytes.size();
            if (took < plain_bytes) {
                st.plain.assign(reinterpret_cast<const char*>(scratch.data()) + took, plain_bytes - took);
                if (st.plain.size() > _config.plaintext_buffered_max) {
                    fail(conn, st, fmt::format("the service left {} decrypted bytes unread", st.plain.size()));
                    return bytes.size();
                }
            }
        } else {
            st.plain.append(reinterpret_cast<const char*>(scratch.data()), plain_bytes);
            offer_plaintext(conn, st);
            if (!_shard.is_open(conn)) return bytes.size();
        }
    } else if (!st.plain.empty()) {
        // The shard offers input again (empty) when the service can take what it left, e.g.
        // frames pipelined behind ClientInfo once registration is done.
        offer_plaintext(conn, st);
        if (!_shard.is_open(conn)) return bytes.size();
    }
    // A KeyUpdate answer, or the alert a bad record earns, goes out before anything else.
    if (!had_output && !st.cipher_out.empty()) _shard.want_write(conn);
    if (stop.close == record_close::none) return used;
    _counters.record_closes[static_cast<std::size_t>(stop.close)].add();
    if (stop.close == record_close::close_notify) {
        // What the service still answers goes out, then the connection closes.
        _shard.close_after_flush(conn);
        return bytes.size();
    }
    fail(conn, st,
         stop.close == record_close::alert
             ? fmt::format("the peer sent alert {} (record {} under the current keys)", stop.alert, st.records->rx_seq())
             : fmt::format("record {}: {}", st.records->rx_seq(), to_string(stop.close)));
    return bytes.size();
}

std::string tls_layer::install_direction(conn_id conn, conn_tls& st, const std::optional<ktls_keys>& keys,
                                         bool transmit) noexcept {
    if (!keys)
        return fmt::format("cipher {} cannot be offloaded, or the keys changed (KeyUpdate)",
                           st.tls ? st.tls->cipher_name() : "?");
    const int fd = _shard.fd_of(conn);
    if (!st.ulp_attached) {
        if (auto attached = ktls_attach(fd); !attached) return attached.error();
        st.ulp_attached = true;
    }
    if (auto installed = ktls_install(fd, transmit, transmit ? keys->tx : keys->rx); !installed) return installed.error();
    return {};
}

bool tls_layer::install_tx(conn_id conn, conn_tls& st) noexcept {
    st.ktls_tx_pending = false;
    const auto keys = st.tls ? st.tls->ktls_export() : std::nullopt;
    const std::string problem = install_direction(conn, st, keys, true);
    if (problem.empty()) {
        st.ktls_tx = true;
        st.tls->note_tx_in_kernel();
        maybe_forget_secrets(st);
        settle_path(conn, st);
        ring::log(log_level::debug, "shard {}: slot {}: kTLS TX installed ({} {})", _shard.index(), conn.slot,
                  version_label(keys->version), keys->cipher_name);
        return true;
    }
    _counters.ktls_install_failed.add();
    maybe_forget_secrets(st);
    settle_path(conn, st);
    if (_config.ktls == ktls_mode::require) {
        fail(conn, st, "kTLS required (--ktls=require) but not installed: " + problem);
        return false;
    }
    ring::log(log_level::debug, "shard {}: slot {}: kTLS not used: {}", _shard.index(), conn.slot, problem);
    return false;
}

void tls_layer::on_recv_paused(conn_id conn) noexcept {
    conn_tls* st = find(conn);
    if (st != nullptr && st->queued) return;  // resumed when its handshake may start
    if (st == nullptr || !st->rx_pause_pending) {
        _inner->on_recv_paused(conn);
        return;
    }
    st->rx_pause_pending = false;
    // Receive completions delivered since the pause may have ended off a record boundary:
    // then the kernel cannot take over now; try again at a later boundary.
    if (st->tls && st->tls->at_record_boundary() && st->tls->state() == status::open) {
        const auto keys = st->tls->ktls_export();
        const std::string problem = install_direction(conn, *st, keys, false);
        if (problem.empty()) {
            st->ktls_rx = true;
            ring::log(log_level::debug, "shard {}: slot {}: kTLS RX installed at record {} ({} {})", _shard.index(),
                      conn.slot, keys->rx_seq, version_label(keys->version), keys->cipher_name);
        } else {
            _counters.ktls_install_failed.add();
            st->rx_attempts = rx_attempts_max;  // a refusal will not change
            ring::log(log_level::debug, "shard {}: slot {}: kTLS RX not used: {}", _shard.index(), conn.slot, problem);
        }
    } else {
        ++st->rx_attempts;
    }
    settle_path(conn, *st);
    maybe_forget_secrets(*st);
    if (!st->ktls_rx && _config.ktls == ktls_mode::require && st->rx_attempts >= rx_attempts_max) {
        fail(conn, *st, "kTLS required (--ktls=require) but RX could not be installed");
        return;
    }
    maybe_release_session(*st);
    _shard.resume_recv(conn);
}

void tls_layer::maybe_forget_secrets(conn_tls& st) noexcept {
    // The traffic secrets serve ktls_export() only: once neither direction can still move to
    // the kernel they are wiped, rather than kept for the life of the connection.
    if (!st.tls || st.ktls_tx_pending || st.rx_pause_pending) return;
    const bool rx_may_follow = st.ktls_tx && !st.ktls_rx && st.rx_attempts < rx_attempts_max;
    if (!rx_may_follow) st.tls->forget_traffic_secrets();
}

void tls_layer::maybe_release_session(conn_tls& st) noexcept {
    // Both directions in the kernel and nothing OpenSSL still owes the socket: the SSL object
    // and its buffers go, and an idle connection costs no userspace TLS memory.
    if (st.ktls_tx && st.ktls_rx && !st.ktls_tx_pending && st.cipher_out.empty()) {
        st.tls.reset();
        std::string().swap(st.cipher_out);
    }
}

void tls_layer::offer_plaintext(conn_id conn, conn_tls& st) noexcept {
    if (st.plain.empty()) return;
    const std::size_t used = _inner->on_data(conn, {reinterpret_cast<const std::uint8_t*>(st.plain.data()), st.plain.size()});
    if (!_shard.is_open(conn)) return;  // the service closed it: on_closed has reset `st`
    st.plain.erase(0, std::min(used, st.plain.size()));
    if (st.plain.empty()) {
        if (st.plain.capacity() > 4096) std::string().swap(st.plain);
    } else if (st.plain.size() > _config.plaintext_buffered_max) {
        fail(conn, st, fmt::format("the service left {} decrypted bytes unread", st.plain.size()));
    }
}

std::size_t tls_layer::on_data(conn_id conn, std::span<const std::uint8_t> bytes) noexcept {
    conn_tls* found = find(conn);
    if (found == nullptr) return _inner->on_data(conn, bytes);
    conn_tls& st = *found;
    if (st.records) return records_data(conn, st, bytes);
    if (st.waiting) {
        if (bytes.empty()) return 0;
        // No place (and no SSL object) before the first record, normally the whole ClientHello,
        // is here: a peer that trickles it a byte at a time (a TLS slowloris) holds only the
        // bytes the shard keeps for it, bounded like any unfinished connection's, and cannot
        // take the places real clients' handshakes need. Bytes that are not a TLS handshake
        // record go to the library at once, which refuses them as before.
        if (!st.queued && client_hello_incomplete(bytes)) return 0;
        const bool arrived = !st.queued;  // its ClientHello is here for the first time
        if (arrived && _places.arrive(conn, st.source)) {
            publish_places();
            st.waiting = false;
            start_handshake(st);
        } else {
            // Its turn has not come (no place on the shard, or its source has its share): the
            // shard keeps these bytes; no more are read until then.
            if (arrived) {
                st.queued = true;
                ++_waiting_live;
                publish_places();
            }
            if (!st.waiting_paused) {
                st.waiting_paused = true;
                _shard.pause_recv(conn);
            }
            return 0;
        }
    }
    if (!st.tls || st.ktls_rx) {
        // The kernel decrypts: these bytes are plaintext.
        if (st.plain.empty()) return _inner->on_data(conn, bytes);
        st.plain.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
        offer_plaintext(conn, st);
        return bytes.size();
    }
    if (st.tls->state() == status::failed) return bytes.size();  // closing already
    const bool was_handshaking = st.tls->state() == status::handshaking;
    // feed() calls nothing outside OpenSSL, so the connection cannot close under it.
    status s = st.tls->feed(bytes, st.plain, st.cipher_out);
    // The handshake may have finished in this read even if a record behind it then failed.
    if (was_handshaking && st.tls->handshake_complete()) {
        const std::size_t tail = st.tls->handoff_offset();
        handshake_done(conn, st);
        if (!_shard.is_open(conn) || find(conn) == nullptr) return bytes.size();
        if (!st.cipher_out.empty()) _shard.want_write(conn);
        // Whatever followed the Finished in this read is records: the layer's, or OpenSSL's
        // again where the layer could not start.
        if (st.records) return tail + records_data(conn, st, bytes.subspan(tail));
        if (tail > 0 && tail < bytes.size()) s = st.tls->feed(bytes.subspan(tail), st.plain, st.cipher_out);
    }
    if (s == status::failed) {
        if (find(conn) != nullptr) fail(conn, st, st.tls->error());
        return bytes.size();
    }
    if (!_shard.is_open(conn)) return bytes.size();
    if (!st.cipher_out.empty()) _shard.want_write(conn);
    offer_plaintext(conn, st);
    if (!_shard.is_open(conn)) return bytes.size();
    if (s == status::closed) {
        // close_notify: what the service still answers goes out, then the connection closes.
        _shard.close_after_flush(conn);
        return bytes.size();
    }
    // A later boundary may still let the kernel take RX over.
    if (!was_handshaking && st.ktls_tx && !st.ktls_rx && !st.rx_pause_pending &&
        st.rx_attempts < rx_attempts_max && st.tls->at_record_boundary()) {
        st.rx_pause_pending = true;
        _shard.pause_recv(conn);
    }
    return bytes.size();
}

std::size_t tls_layer::on_writable(conn_id conn, std::span<std::uint8_t> out) noexcept {
    conn_tls* found = find(conn);
    if (found == nullptr) return _inner->on_writable(conn, out);
    conn_tls& st = *found;
    std::size_t n = 0;
    if (!st.cipher_out.empty()) {
        // Records OpenSSL already made go first, in order.
        n = std::min(out.size(), st.cipher_out.size());
        std::memcpy(out.data(), st.cipher_out.data(), n);
        st.cipher_out.erase(0, n);
        if (!st.cipher_out.empty() || st.ktls_tx_pending) {
            _shard.want_write(conn);
            return n;
        }
        if (st.cipher_out.capacity() > 4096) std::string().swap(st.cipher_out);
        // Room left: the service's first records follow in the same send (a client's request
        // right behind its Finished, as Go's client sends it).
    }
    if (st.ktls_tx_pending) {
        // The previous send (the last handshake flight) has completed: the kernel may encrypt.
        if (!install_tx(conn, st) && !_shard.is_open(conn)) return 0;
        maybe_release_session(st);
    }
    // The kernel encrypts what follows whatever was copied above (never expected: the
    // session refuses to produce records once TX is in the kernel).
    if (st.ktls_tx) return n + _inner->on_writable(conn, out.subspan(n));
    if (st.records) {
        // The service writes into the shard's staging buffer; records are sealed from there
        // straight into the registered send buffer, coalesced up to 16 KiB each.
        const auto room = out.subspan(n);
        const std::size_t plain_max = std::min(_plain_out.size(), st.records->plain_fitting(room.size()));
        if (plain_max == 0) {
            _shard.want_write(conn);
            return n;
        }
        const std::size_t plain = _inner->on_writable(conn, {_plain_out.data(), plain_max});
        if (plain == 0 || find(conn) == nullptr) return n;
        const std::size_t sealed = st.records->seal({_plain_out.data(), plain}, room);
        if (sealed == 0) {
            fail(conn, st, "sealing a record failed");
            return n;
        }
        return n + sealed;
    }
    if (!st.tls || st.tls->state() != status::open || st.version == 0) return n;
    const auto room = out.subspan(n);
    const std::size_t records = room.size() / record_plaintext_max + 1;
    if (room.size() <= records * record_overhead_bytes) {
        _shard.want_write(conn);
        return n;
    }
    const std::size_t plain_max = std::min(_plain_out.size(), room.size() - records * record_overhead_bytes);
    const std::size_t plain = _inner->on_writable(conn, {_plain_out.data(), plain_max});
    if (plain == 0 || find(conn) == nullptr) return n;
    n += st.tls->write({_plain_out.data(), plain}, room, st.cipher_out);
    if (st.tls->state() == status::failed) {
        fail(conn, st, st.tls->error());
        return n;
    }
    if (!st.cipher_out.empty()) _shard.want_write(conn);
    return n;
}

void tls_layer::on_timer(conn_id conn, std::uint8_t timer_id) noexcept {
    if (timer_id != timer_handshake) {
        _inner->on_timer(conn, timer_id);
        return;
    }
    conn_tls* st = find(conn);
    if (st == nullptr || st->version != 0) return;
    _counters.handshakes_timeout.add();
    if (const auto n = _fail_log.allow(_shard.now_ns()))
        ring::log(log_level::info, "shard {}: TLS handshake on slot {} not finished in {} ms; closing", _shard.index(),
                  conn.slot, _config.handshake_timeout_ns / 1'000'000);
    _shard.close(conn);
}

void tls_layer::on_recv_error(conn_id conn, int error) noexcept {
    conn_tls* st = find(conn);
    if (st == nullptr || !st->ktls_rx || error != EIO) {
        _inner->on_recv_error(conn, error);
        return;
    }
    // kTLS RX fails a plain recv with EIO when the next record is not application data.
    _counters.ktls_control_records.add();
    auto record = read_control_record(_shard.fd_of(conn));
    ring::log(log_level::debug, "shard {}: slot {}: under kTLS RX: {}; closing", _shard.index(), conn.slot,
              record ? describe(record.value()) : record.error());
}

void tls_layer::on_flushed_close(conn_id conn) noexcept {
    _inner->on_flushed_close(conn);
    conn_tls* st = find(conn);
    if (st == nullptr || st->version == 0) return;
    // An orderly end says so, as Go's tls.Conn.Close does (RFC 8446 6.1): everything else has
    // been sent, so the alert goes out now with a plain non-blocking send of a few bytes.
    if (st->ktls_tx) {
        (void)ktls_send_close_notify(_shard.fd_of(conn));
        return;
    }
    if (st->records) {
        const record_close closed = st->records->closed();
        if (closed != record_close::none && closed != record_close::close_notify) return;
        std::string alert;
        st->records->seal_alert(1, 0, alert);
        if (!alert.empty()) (void)::send(_shard.fd_of(conn), alert.data(), alert.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        return;
    }
    if (!st->tls || st->tls->state() == status::failed) return;
    std::string alert;
    st->tls->shutdown(alert);
    if (!alert.empty()) (void)::send(_shard.fd_of(conn), alert.data(), alert.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
}

void tls_layer::on_closed(conn_id conn, ring::close_cause cause) noexcept {
    _inner->on_closed(conn, cause);
    conn_tls* st = find(conn);
    if (st == nullptr) return;
    if (st->version == TLS1_3_VERSION) _counters.open_tls13.sub();
    else if (st->version != 0) _counters.open_tls12.sub();
    const bool was_in_flight = st->in_flight;
    const std::uint64_t source = st->source;
    if (st->queued) {  // gone while it waited: its entry in _places goes stale
        --_waiting_live;
        publish_places();
    }
    *st = conn_tls{};
    if (was_in_flight) {
        _places.leave(source);
        admit_waiting();
    }
}

}  // namespace derp::tls
