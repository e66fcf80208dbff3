// A server session of -Dtls_library=wolfssl (crypto/tls.hh): wolfSSL runs the handshake
// (crypto/tls_wolfssl.cc) and is freed the moment it completes; every record after that,
// either way, goes through the userspace record layer (crypto/tls_record.hh), started from
// the keys and sequence numbers wolfSSL ended with. A caller that takes the records itself
// (hand_off_records) gets them through record_export(); otherwise this session keeps a
// record layer and feed()/write()/shutdown() go on as with OpenSSL, so that kTLS can still
// take over later at a record boundary (ktls_export counts what the layer sealed and opened).
// Also the hand-over of a checked OpenSSL context's certificate and key to wolfSSL.
#include "crypto/tls.hh"
#include "crypto/tls_internal.hh"
#include "crypto/tls_record.hh"
#include "crypto/tls_wolfssl.hh"

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include <vector>

#include <fmt/format.h>

namespace derp::tls {

// The checked OpenSSL context's chain (leaf, intermediates, meta certificate) and key as PEM,
// for wolfSSL to load: what derpd serves is what OpenSSL accepted, byte for byte.
result<void, std::string> wolf_server_from(SSL_CTX* ctx, wolf_server*& out, const context::state* settings) {
    BIO* chain = BIO_new(BIO_s_mem());
    BIO* key = BIO_new(BIO_s_secmem());  // cleared when freed, reallocations included
    STACK_OF(X509)* extra = nullptr;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wold-style-cast"
    SSL_CTX_get0_chain_certs(ctx, &extra);
#pragma GCC diagnostic pop
    bool ok = chain != nullptr && key != nullptr && PEM_write_bio_X509(chain, SSL_CTX_get0_certificate(ctx)) == 1;
    for (int k = 0; ok && extra != nullptr && k < sk_X509_num(extra); ++k)
        ok = PEM_write_bio_X509(chain, sk_X509_value(extra, k)) == 1;
    ok = ok && PEM_write_bio_PrivateKey(key, SSL_CTX_get0_privatekey(ctx), nullptr, nullptr, 0, nullptr, nullptr) == 1;
    std::string chain_pem;
    secret_bytes key_pem;
    if (ok) {
        char* data = nullptr;
        long n = BIO_get_mem_data(chain, &data);
        chain_pem.assign(data, static_cast<std::size_t>(n));
        n = BIO_get_mem_data(key, &data);
        key_pem.assign(data, data + n);
        wipe_secret(data, static_cast<std::size_t>(n));
    }
    BIO_free(chain);
    BIO_free(key);
    if (!ok) return unexpected("PEM for wolfSSL: " + openssl_errors());
    auto made = wolf_server_make(chain_pem, key_pem, settings);
    if (!made) return unexpected(made.error());
    out = made.value();
    return {};
}

status session::feed_wolf(std::span<const std::uint8_t> cipher, std::string& plain, std::string& cipher_out) noexcept {
    if (_status == status::open) return open_records(cipher, plain, cipher_out);
    io_window& w = _secrets->window;
    w = io_window{};
    w.in = cipher.data();
    w.in_length = cipher.size();
    w.spill = &cipher_out;
    std::string problem;
    const wolf_step step = wolf_accept(_secrets->wolf, *_secrets, problem);
    if (step == wolf_step::more) return _status;
    // Done or failed, the wolfSSL object and its buffers go now: nothing after the handshake
    // needs them.
    wolf_handshake_free(_secrets->wolf);
    _secrets->wolf = nullptr;
    if (step == wolf_step::failed) return fail(problem);
    _status = status::open;
    _handshake_complete = true;
    if (!_secrets->wolf_keys)
        return fail(fmt::format("TLS {} {}: no keys for the record layer from wolfSSL", version_label(_secrets->wolf_version),
                                _secrets->wolf_cipher));
    if (_hand_off) {
        _handoff_offset = w.in_position;
        return _status;
    }
    auto layer = record_layer::make(*_secrets->wolf_keys);
    if (!layer) return fail("record layer: " + layer.error());
    _secrets->records = std::move(layer.value());
    return open_records(cipher.subspan(w.in_position), plain, cipher_out);
}

status session::open_records(std::span<const std::uint8_t> cipher, std::string& plain, std::string& cipher_out) noexcept {
    record_layer& records = *_secrets->records;
    scan_records(cipher);
    std::string& partial = _secrets->partial;
    std::span<const std::uint8_t> in = cipher;
    if (!partial.empty()) {
        partial.append(reinterpret_cast<const char*>(cipher.data()), cipher.size());
        in = std::span(reinterpret_cast<const std::uint8_t*>(partial.data()), partial.size());
    }
    thread_local std::vector<std::uint8_t> scratch(record_open_room);
    std::string to_send;
    std::size_t used = 0;
    status result = _status;
    while (used < in.size()) {
        const opened o = records.open(in.subspan(used), scratch.data(), to_send);
        if (o.close == record_close::close_notify) {
            _status = status::closed;
            result = _status;
            used = in.size();
            break;
        }
        if (o.close != record_close::none) {
            result = fail(fmt::format("record: {}{}", to_string(o.close),
                                      o.close == record_close::alert ? fmt::format(" (alert {})", o.alert) : ""));
            used = in.size();
            break;
        }
        if (o.consumed == 0) break;  // the rest of a record is still to come
        plain.append(reinterpret_cast<const char*>(scratch.data()), o.plain_bytes);
        used += o.consumed;
    }
    std::string rest(reinterpret_cast<const char*>(in.data() + used), in.size() - used);
    partial.swap(rest);
    if (!to_send.empty()) {
        // A KeyUpdate answer or a fatal alert. Once the kernel encrypts TX, the layer's TX
        // state is stale: such a record would go out with reused nonces, so the session
        // closes instead, as the OpenSSL path does.
        if (_secrets->tx_in_kernel) {
            if (result != status::failed)
                return fail("the client wants a record (KeyUpdate answer or alert) that cannot be sent once the "
                            "kernel encrypts: closing");
            _error += " (its alert is not sent: the kernel encrypts TX now)";
            return result;
        }
        cipher_out += to_send;
    }
    return result;
}

std::size_t session::seal_records(std::span<const std::uint8_t> plain, std::span<std::uint8_t> out,
                                  std::string& spill) noexcept {
    if (_secrets->records == nullptr) return 0;
    record_layer& records = *_secrets->records;
    // What fits goes straight into `out`, the rest is sealed into `spill`.
    const std::size_t direct = std::min(plain.size(), records.plain_fitting(out.size()));
    std::size_t written = direct > 0 ? records.seal(plain.first(direct), out) : 0;
    if (direct < plain.size()) {
        const auto rest = plain.subspan(direct);
        std::vector<std::uint8_t> sealed(records.sealed_bytes(rest.size()));
        const std::size_t n = records.seal(rest, sealed);
        spill.append(reinterpret_cast<const char*>(sealed.data()), n);
    }
    return written;
}

}  // namespace derp::tls
