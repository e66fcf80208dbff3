// Runs inside the test VM (kernel with kTLS): the kernel's TLS records against the userspace
// record layer's (crypto/tls_record.hh) for the same keys, IVs and sequence numbers. For TLS 1.3
// and 1.2 with AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305, starting at sequence 0 and just
// below 2^32 (the nonce's carry into the upper word):
//   kernel TX -> userspace: a real loopback TCP connection with TLS_TX installed
//     (crypto/ktls.hh, crypto_info from ktls_direction_of) writes plaintexts of 1, 100, 16384,
//     1000 and 5 bytes and a close_notify through TLS_SET_RECORD_TYPE; the plain peer's bytes
//     must equal, byte for byte, what record_layer::seal/seal_alert make of the same input,
//     and the peer's record_layer opens every one of them in order.
//   userspace -> kernel RX: the peer seals data records, a close_notify alert and more data
//     (one write); the kernel hands back the data, the alert as a control record
//     (read_control_record) and the data behind it, so sequence numbers run on past it.
//   a flipped tag byte: the kernel refuses it (recv fails with EBADMSG), and so does the
//     userspace layer (bad_tag), which opens the same record intact.
// usage: ktls_records_check   (exit 0 all passed, 1 a check failed, 77 no kTLS in this kernel)
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "crypto/ktls.hh"
#include "crypto/tls_record.hh"

using namespace derp;
using bytes = std::vector<std::uint8_t>;

namespace {

int failures = 0;

bool check(bool ok, const std::string& what) {
    std::printf("%s: %s\n", ok ? "ok" : "FAIL", what.c_str());
    std::fflush(stdout);
    if (!ok) ++failures;
    return ok;
}

// A hang guard only (a lost record would block a read forever); no verdict depends on it.
constexpr int io_timeout_s = 30;

// A connected TCP pair on 127.0.0.1 (kTLS is a TCP ULP: socketpair(AF_UNIX) would not do).
bool tcp_pair(int* kernel_side, int* peer_side) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0 || ::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listener, 1) != 0 || ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
        return check(false, fmt::format("listening socket: {}", std::strerror(errno)));
    *peer_side = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (*peer_side < 0 || ::connect(*peer_side, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
        return check(false, fmt::format("connect: {}", std::strerror(errno)));
    *kernel_side = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    ::close(listener);
    if (*kernel_side < 0) return check(false, fmt::format("accept: {}", std::strerror(errno)));
    const timeval tv{io_timeout_s, 0};
    for (int fd : {*kernel_side, *peer_side}) {
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    return true;
}

bool send_all(int fd, std::span<const std::uint8_t> data) {
    for (std::size_t done = 0; done < data.size();) {
        const ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
        if (n <= 0) return false;
        done += static_cast<std::size_t>(n);
    }
    return true;
}

// Exactly n bytes (of plaintext, on a kTLS RX socket); empty on EOF or error (errno kept).
bytes recv_exact(int fd, std::size_t n) {
    bytes out(n);
    for (std::size_t got = 0; got < n;) {
        const ssize_t r = ::recv(fd, out.data() + got, n - got, 0);
        if (r <= 0) {
            if (r == 0) errno = 0;
            return {};
        }
        got += static_cast<std::size_t>(r);
    }
    return out;
}

bytes read_to_eof(int fd) {
    bytes out;
    std::uint8_t buf[65536];
    for (;;) {
        const ssize_t r = ::recv(fd, buf, sizeof buf, 0);
        if (r <= 0) return out;
        out.insert(out.end(), buf, buf + r);
    }
}

// The next record on a kTLS RX socket that the kernel holds back as a control record. The
// project's read_control_record does not block; poll and retry until the record is complete.
result<tls::control_record, std::string> next_control_record(int fd) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(io_timeout_s);
    for (;;) {
        pollfd p{fd, POLLIN, 0};
        ::poll(&p, 1, 100);
        auto record = tls::read_control_record(fd);
        if (record) return record;
        const bool incomplete = record.error() == fmt::format("recvmsg: {}", std::strerror(EAGAIN));
        if (!incomplete || std::chrono::steady_clock::now() > deadline) return record;
    }
}

bytes pattern(std::size_t n, std::uint8_t seed) {
    bytes out(n);
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::uint8_t>(seed + i * 31 + (i >> 8));
    return out;
}

tls::secret_bytes material(std::size_t n, std::uint8_t seed) {
    tls::secret_bytes out(n);
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::uint8_t>(seed + 7 * i);
    return out;
}

// The other end of the same connection: what one side sends the other receives.
tls::record_keys mirrored(const tls::record_keys& k) {
    tls::record_keys m = k;
    std::swap(m.tx_key, m.rx_key);
    std::swap(m.tx_iv, m.rx_iv);
    std::swap(m.tx_secret, m.rx_secret);
    std::swap(m.tx_seq, m.rx_seq);
    return m;
}

std::unique_ptr<tls::record_layer> layer(const tls::record_keys& k) {
    auto made = tls::record_layer::make(k);
    if (!made) {
        check(false, "record_layer::make: " + made.error());
        return nullptr;
    }
    // TLS 1.3 AES-GCM: the layer puts a KeyUpdate of its own in front once a key has sealed
    // 2^24 records (its sequence number past that); the kernel never rekeys TX by itself. The
    // runs from 2^32 - 2 are about nonce arithmetic, so that policy is lifted for them.
    made.value()->tx_records_per_key = UINT64_MAX;
    return std::move(made.value());
}

// Where two record streams first differ, in records, for the failure message.
std::string first_difference(const bytes& kernel, const bytes& user) {
    std::size_t at = 0;
    for (int record = 0; at + tls::record_header_bytes <= user.size(); ++record) {
        const std::size_t size = tls::record_header_bytes + (std::size_t{user[at + 3]} << 8 | user[at + 4]);
        for (std::size_t i = at; i < at + size; ++i)
            if (i >= kernel.size() || kernel[i] != user[i])
                return fmt::format("record {} differs at its byte {} (kernel {} bytes, userspace {})", record,
                                   i - at, kernel.size(), user.size());
        at += size;
    }
    return fmt::format("kernel {} bytes, userspace {}", kernel.size(), user.size());
}

// Kernel TX -> plain peer, compared with the userspace layer's records for the same input;
// then the peer's userspace layer opens them. `kernel` has TLS_TX installed.
void kernel_to_userspace(const std::string& name, int kernel, int peer, const tls::record_keys& keys) {
    const std::size_t sizes[] = {1, 100, 16384, 1000, 5};
    bytes captured;
    std::thread reader([&] { captured = read_to_eof(peer); });
    bool sent = true;
    for (std::size_t i = 0; i < std::size(sizes); ++i) sent = sent && send_all(kernel, pattern(sizes[i], static_cast<std::uint8_t>(i)));
    const auto alert = tls::ktls_send_close_notify(kernel);
    ::shutdown(kernel, SHUT_WR);
    reader.join();
    check(sent && alert, name + ": kernel TX took every write" + (alert ? "" : " (" + alert.error() + ")"));

    auto twin = layer(keys);
    if (!twin) return;
    bytes expected;
    for (std::size_t i = 0; i < std::size(sizes); ++i) {
        const bytes plain = pattern(sizes[i], static_cast<std::uint8_t>(i));
        bytes sealed(twin->sealed_bytes(plain.size()));
        sealed.resize(twin->seal(plain, sealed));
        expected.insert(expected.end(), sealed.begin(), sealed.end());
    }
    std::string close_notify;
    twin->seal_alert(1, 0, close_notify);
    expected.insert(expected.end(), close_notify.begin(), close_notify.end());
    check(captured == expected, name + ": kernel TX records equal the userspace layer's byte for byte (" +
                                    (captured == expected ? fmt::format("{} bytes, 6 records", captured.size())
                                                          : first_difference(captured, expected)) + ")");

    // The peer opens what the kernel sealed, sequence numbers running on record after record.
    auto opener = layer(mirrored(keys));
    if (!opener) return;
    std::vector<std::uint8_t> out(tls::record_open_room);
    std::string to_send;
    std::size_t at = 0;
    bool all_opened = true;
    for (std::size_t i = 0; i < std::size(sizes) && all_opened; ++i) {
        const tls::opened o = opener->open(std::span(captured).subspan(at), out.data(), to_send);
        all_opened = o.close == tls::record_close::none && o.consumed > 0 &&
                     bytes(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(o.plain_bytes)) ==
                         pattern(sizes[i], static_cast<std::uint8_t>(i));
        at += o.consumed;
    }
    const tls::opened last = all_opened ? opener->open(std::span(captured).subspan(at), out.data(), to_send) : tls::opened{};
    check(all_opened && last.close == tls::record_close::close_notify && at + last.consumed == captured.size(),
          name + ": the userspace layer opens the kernel's 5 data records and its close_notify");

    // A kernel record with one tag bit flipped: the userspace layer refuses it.
    if (captured.size() < tls::record_header_bytes) return;
    const std::size_t first_record = tls::record_header_bytes + (std::size_t{captured[3]} << 8 | captured[4]);
    if (captured.size() < first_record) return;
    bytes flipped(captured.begin(), captured.begin() + static_cast<std::ptrdiff_t>(first_record));
    flipped.back() ^= 0x01;
    auto fresh = layer(mirrored(keys));
    if (!fresh) return;
    const tls::opened bad = fresh->open(flipped, out.data(), to_send);
    check(bad.close == tls::record_close::bad_tag,
          name + ": the userspace layer refuses a kernel record with a flipped tag bit (" +
              std::string(tls::to_string(bad.close)) + ")");
}

// Userspace-sealed records -> kernel RX: data, a close_notify alert as a control record, data
// behind it, then a record with a flipped tag bit. `kernel` has TLS_RX installed.
void userspace_to_kernel(const std::string& name, int kernel, int peer, const tls::record_keys& keys) {
    auto sealer = layer(mirrored(keys));
    if (!sealer) return;
    const std::size_t before_alert[] = {1, 100, 16384};
    const bytes after_alert = pattern(1000, 0x40);
    const bytes last = pattern(7, 0x50);
    std::string wire;
    auto seal_into = [&](const bytes& plain) {
        const std::size_t at = wire.size();
        wire.resize(at + sealer->sealed_bytes(plain.size()));
        wire.resize(at + sealer->seal(plain, std::span(reinterpret_cast<std::uint8_t*>(wire.data()) + at, wire.size() - at)));
    };
    for (std::size_t i = 0; i < std::size(before_alert); ++i) seal_into(pattern(before_alert[i], static_cast<std::uint8_t>(0x20 + i)));
    sealer->seal_alert(1, 0, wire);
    seal_into(after_alert);
    const std::size_t last_at = wire.size();
    seal_into(last);
    const bytes intact(wire.begin() + static_cast<std::ptrdiff_t>(last_at), wire.end());
    wire.back() = static_cast<char>(wire.back() ^ 0x01);  // the last record's tag
    const bytes flipped(wire.begin() + static_cast<std::ptrdiff_t>(last_at), wire.end());

    bool sent = false;
    std::thread writer([&] { sent = send_all(peer, std::span(reinterpret_cast<const std::uint8_t*>(wire.data()), wire.size())); });
    bool data_ok = true;
    for (std::size_t i = 0; i < std::size(before_alert); ++i)
        data_ok = data_ok && recv_exact(kernel, before_alert[i]) == pattern(before_alert[i], static_cast<std::uint8_t>(0x20 + i));
    check(data_ok, name + ": kernel RX opens the userspace layer's records of 1, 100 and 16384 bytes");
    const auto control = next_control_record(kernel);
    check(control && control.value().type == 21 && control.value().body == bytes{1, 0},
          name + ": kernel RX hands the userspace layer's close_notify over as a control record" +
              (control ? "" : " (" + control.error() + ")"));
    check(recv_exact(kernel, after_alert.size()) == after_alert,
          name + ": kernel RX opens the record behind the alert (sequence numbers run on)");
    std::uint8_t byte = 0;
    const ssize_t r = ::recv(kernel, &byte, 1, 0);
    const int error = errno;
    check(r < 0 && error == EBADMSG,
          name + ": kernel RX refuses a record with a flipped tag bit with EBADMSG (" +
              (r < 0 ? std::string(std::strerror(error)) : fmt::format("recv returned {}", r)) + ")");
    ::shutdown(kernel, SHUT_RDWR);
    writer.join();
    check(sent, name + ": the peer wrote every record");

    // The userspace layer at the same place in the stream: refuses the flipped record, opens it intact.
    tls::record_keys at_last = keys;
    at_last.rx_seq = keys.rx_seq + std::size(before_alert) + 2;
    auto refuser = layer(at_last), opener = layer(at_last);
    if (!refuser || !opener) return;
    std::vector<std::uint8_t> out(tls::record_open_room);
    std::string to_send;
    const tls::opened bad = refuser->open(flipped, out.data(), to_send);
    const tls::opened good = opener->open(intact, out.data(), to_send);
    check(bad.close == tls::record_close::bad_tag && good.close == tls::record_close::none &&
              bytes(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(good.plain_bytes)) == last,
          name + ": the userspace layer refuses the flipped record too (" + std::string(tls::to_string(bad.close)) +
              ") and opens it intact");
}

void run(const std::string& name, const tls::record_keys& keys) {
    int kernel = -1, peer = -1;
    if (!tcp_pair(&kernel, &peer)) return;
    auto tx = tls::ktls_direction_of(keys, true);
    auto rx = tls::ktls_direction_of(keys, false);
    auto attached = tls::ktls_attach(kernel);
    if (!check(tx && rx && attached, name + ": TCP_ULP tls attached" + (attached ? "" : " (" + attached.error() + ")"))) {
        ::close(kernel);
        ::close(peer);
        return;
    }
    auto tx_installed = tls::ktls_install(kernel, true, tx.value());
    auto rx_installed = tls::ktls_install(kernel, false, rx.value());
    if (check(tx_installed && rx_installed,
              name + ": TLS_TX and TLS_RX installed" +
                  (tx_installed ? "" : " (" + tx_installed.error() + ")") +
                  (rx_installed ? "" : " (" + rx_installed.error() + ")"))) {
        kernel_to_userspace(name, kernel, peer, keys);
        userspace_to_kernel(name, kernel, peer, keys);
    }
    ::close(kernel);
    ::close(peer);
}

}  // namespace

int main() {
    const tls::ktls_support support = tls::probe_ktls();
    if (!support.available) {
        std::printf("SKIP: %s\n", support.detail.c_str());
        return 77;
    }
    struct variant {
        const char* name;
        std::uint16_t version;
        tls::aead_cipher cipher;
        bool sha384;
    };
    const variant variants[] = {
        {"TLS 1.3 AES-128-GCM", 0x0304, tls::aead_cipher::aes_128_gcm, false},
        {"TLS 1.3 AES-256-GCM", 0x0304, tls::aead_cipher::aes_256_gcm, true},
        {"TLS 1.3 ChaCha20-Poly1305", 0x0304, tls::aead_cipher::chacha20_poly1305, false},
        {"TLS 1.2 AES-128-GCM", 0x0303, tls::aead_cipher::aes_128_gcm, false},
        {"TLS 1.2 AES-256-GCM", 0x0303, tls::aead_cipher::aes_256_gcm, false},
        {"TLS 1.2 ChaCha20-Poly1305", 0x0303, tls::aead_cipher::chacha20_poly1305, false},
    };
    // 0 as after a handshake; just below 2^32 so the records cross into the nonce's upper word.
    const std::uint64_t first_seqs[] = {0, 0xfffffffeULL};
    std::uint8_t seed = 1;
    for (const auto& v : variants) {
        for (const std::uint64_t first : first_seqs) {
            tls::record_keys k;
            k.version = v.version;
            k.cipher = v.cipher;
            k.sha384 = v.sha384;
            const std::size_t key_bytes = v.cipher == tls::aead_cipher::aes_128_gcm ? 16 : 32;
            const std::size_t iv_bytes = v.version == 0x0303 && v.cipher != tls::aead_cipher::chacha20_poly1305 ? 4 : 12;
            k.tx_key = material(key_bytes, seed++);
            k.rx_key = material(key_bytes, seed++);
            k.tx_iv = material(iv_bytes, seed++);
            k.rx_iv = material(iv_bytes, seed++);
            if (v.version == 0x0304) {
                k.tx_secret = material(v.sha384 ? 48 : 32, seed++);
                k.rx_secret = material(v.sha384 ? 48 : 32, seed++);
            }
            // The two directions apart, so that a mix-up of TX and RX material shows.
            k.tx_seq = first;
            k.rx_seq = first + 3;
            run(fmt::format("{} from record {:#x}", v.name, first), k);
        }
    }
    std::printf("%s\n", failures == 0 ? "ktls_records_check: all passed" : "ktls_records_check: FAILED");
    return failures == 0 ? 0 : 1;
}
