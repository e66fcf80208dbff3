// libFuzzer target for the userspace record opener (crypto/tls_record): a layer with fixed keys
// opens a byte stream cut into reads of varying size, in place or into a separate buffer, as
// derpd feeds it. Byte 0 picks version and cipher, byte 1 the mode. In raw mode the rest is
// the stream itself. In scripted mode (byte 1's top bit) the rest is a list of operations for
// a twin layer holding the other end of the keys (seal application data, seal a record of any
// content type with padding, update its keys, append raw bytes, flip a bit), so that inputs
// reach what lies behind a valid tag. Invariants: a record is consumed whole or not at all,
// no plaintext beyond 2^14, a close is final, the application data opened is a prefix of what
// the twin sealed, and every record the layer sends back (KeyUpdate answers, alerts) opens at
// the twin.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/assert.hh"
#include "crypto/tls_record.hh"

using namespace derp::tls;

namespace {

struct layer_pair {
    std::unique_ptr<record_layer> layer, twin;
};

layer_pair make_pair(std::uint8_t choice) {
    static const aead_cipher ciphers[] = {aead_cipher::aes_128_gcm, aead_cipher::aes_256_gcm,
                                          aead_cipher::chacha20_poly1305};
    record_keys k;
    k.version = choice & 1 ? 0x0303 : 0x0304;
    k.cipher = ciphers[(choice >> 1) % 3];
    k.sha384 = k.version == 0x0304 && k.cipher == aead_cipher::aes_256_gcm;
    const std::size_t key_bytes = k.cipher == aead_cipher::aes_128_gcm ? 16 : 32;
    const std::size_t iv_bytes = k.version == 0x0303 && k.cipher != aead_cipher::chacha20_poly1305 ? 4 : 12;
    k.tx_key = secret_bytes(key_bytes, 0x11);
    k.rx_key = secret_bytes(key_bytes, 0x22);
    k.tx_iv = secret_bytes(iv_bytes, 0x33);
    k.rx_iv = secret_bytes(iv_bytes, 0x44);
    if (k.version == 0x0304) {
        k.tx_secret = secret_bytes(k.sha384 ? 48 : 32, 0x55);
        k.rx_secret = secret_bytes(k.sha384 ? 48 : 32, 0x66);
    }
    k.rx_seq = choice >> 4;
    record_keys t = k;
    std::swap(t.tx_key, t.rx_key);
    std::swap(t.tx_iv, t.rx_iv);
    std::swap(t.tx_secret, t.rx_secret);
    std::swap(t.tx_seq, t.rx_seq);
    layer_pair p;
    auto a = record_layer::make(k);
    auto b = record_layer::make(t);
    DERP_ASSERT(a && b);
    p.layer = std::move(a.value());
    p.twin = std::move(b.value());
    return p;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    layer_pair p = make_pair(data[0]);
    const std::uint8_t mode = data[1];
    const bool scripted = (mode & 0x80) != 0;
    const bool in_place = (mode & 0x40) != 0;
    const std::size_t read_bytes = 1 + (mode & 0x3f) * 97u;
    std::vector<std::uint8_t> stream;
    std::string sealed_plain;  // application data the twin sealed, in order
    if (!scripted) {
        stream.assign(data + 2, data + size);
    } else {
        for (std::size_t i = 2; i + 2 <= size;) {
            const std::uint8_t op = data[i];
            const std::size_t length = std::min<std::size_t>(data[i + 1], size - i - 2);
            const std::uint8_t* arg = data + i + 2;
            i += 2 + length;
            std::vector<std::uint8_t> out(length * 80 + 512);
            std::size_t n = 0;
            switch (op % 6) {
                case 0: {  // application data; the length byte scaled up to span records
                    std::vector<std::uint8_t> plain(length * 77, 'a');
                    for (std::size_t k = 0; k < length; ++k) plain[k * 77] = arg[k];
                    n = p.twin->seal(plain, out);
                    if (n > 0) sealed_plain.append(plain.begin(), plain.end());
                    break;
                }
                case 1:  // a record of content type arg[0] with padding op / 6
                    // (In TLS 1.3 type 0 is padding: content ending in a non-zero byte would
                    // simply be read as that type, so only all-zero content is sealed with it.)
                    if (length >= 1 && (arg[0] != 0 || p.twin->version() == 0x0303 ||
                                        std::all_of(arg + 1, arg + length, [](std::uint8_t b) { return b == 0; }))) {
                        n = p.twin->seal_typed(arg[0], std::span(arg + 1, length - 1), out.data(), op / 6);
                        if (arg[0] == 23) sealed_plain.append(arg + 1, arg + length);
                    }
                    break;
                case 2: {
                    std::string update;
                    (void)p.twin->update_tx_keys((op & 0x40) != 0, update);
                    stream.insert(stream.end(), update.begin(), update.end());
                    break;
                }
                case 3: stream.insert(stream.end(), arg, arg + length); break;
                case 4:
                    if (!stream.empty() && length >= 2) stream[(arg[0] << 8 | arg[1]) % stream.size()] ^= static_cast<std::uint8_t>(1u << (op >> 5));
                    break;
                default: {
                    std::string alert;
                    p.twin->seal_alert(length >= 1 ? arg[0] : 2, length >= 2 ? arg[1] : 0, alert);
                    stream.insert(stream.end(), alert.begin(), alert.end());
                    break;
                }
            }
            stream.insert(stream.end(), out.begin(), out.begin() + static_cast<std::ptrdiff_t>(n));
        }
    }
    // Feed in reads of read_bytes, keeping what a read left unconsumed in front of the next.
    std::string opened_plain, to_send;
    std::vector<std::uint8_t> pending, out(record_open_room);
    record_close closed = record_close::none;
    for (std::size_t at = 0; at < stream.size() && closed == record_close::none;) {
        const std::size_t n = std::min(read_bytes, stream.size() - at);
        pending.insert(pending.end(), stream.begin() + static_cast<std::ptrdiff_t>(at),
                       stream.begin() + static_cast<std::ptrdiff_t>(at + n));
        at += n;
        std::size_t used = 0;
        while (used < pending.size()) {
            const auto rest = std::span(pending).subspan(used);
            const opened o = in_place ? p.layer->open_in_place(rest, to_send) : p.layer->open(rest, out.data(), to_send);
            if (o.close != record_close::none) {
                closed = o.close;
                DERP_ASSERT(p.layer->closed() == o.close);
                break;
            }
            if (o.consumed == 0) break;
            DERP_ASSERT(o.consumed <= rest.size() && o.consumed >= record_header_bytes);
            DERP_ASSERT(o.consumed == record_header_bytes + (std::size_t{rest[3]} << 8 | rest[4]));
            DERP_ASSERT(o.plain_bytes <= record_plaintext_max);
            const std::uint8_t* plain = in_place ? rest.data() + p.layer->body_offset() : out.data();
            opened_plain.append(reinterpret_cast<const char*>(plain), o.plain_bytes);
            used += o.consumed;
        }
        pending.erase(pending.begin(), pending.begin() + static_cast<std::ptrdiff_t>(used));
    }
    if (closed != record_close::none) {
        std::string ignored;
        const std::uint8_t probe[5] = {23, 3, 3, 0, 0};
        DERP_ASSERT(p.layer->open(probe, out.data(), ignored).close == closed);
    }
    if (scripted) {
        DERP_ASSERT(sealed_plain.compare(0, opened_plain.size(), opened_plain) == 0);
        // What the layer sent back opens at the twin: KeyUpdate answers silently, an alert as one.
        std::vector<std::uint8_t> back(to_send.begin(), to_send.end());
        for (std::size_t used = 0; used < back.size();) {
            std::string ignored;
            const opened o = p.twin->open(std::span(back).subspan(used), out.data(), ignored);
            if (o.close != record_close::none) {
                DERP_ASSERT(o.close == record_close::alert);
                break;
            }
            DERP_ASSERT(o.consumed > 0);
            used += o.consumed;
        }
    }
    return 0;
}
