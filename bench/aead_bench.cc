// aead_bench: the AEAD cost of one TLS record, OpenSSL's EVP against libsodium, to choose the
// backend of crypto/tls_record (the userspace record layer). Seals records of each size with a
// context keyed once (as a connection keeps it), and with a context re-keyed per record (what
// keeping only the raw keys per idle connection would cost). Reports ns per record and GB/s,
// medians of rounds; libsodium has no AES-128-GCM, and AES-256-GCM only with AES-NI.
#include <openssl/evp.h>
#include <sodium.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "bench/bench_util.hh"
#include "core/flags.hh"

namespace {

using clock_type = std::chrono::steady_clock;

struct evp_sealer {
    EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
    const EVP_CIPHER* cipher;
    std::array<std::uint8_t, 32> key{};
    explicit evp_sealer(const EVP_CIPHER* c) : cipher(c) {
        EVP_EncryptInit_ex(ctx, cipher, nullptr, key.data(), nullptr);
    }
    ~evp_sealer() { EVP_CIPHER_CTX_free(ctx); }
    evp_sealer(const evp_sealer&) = delete;
    evp_sealer& operator=(const evp_sealer&) = delete;
    // One record: nonce, 13 bytes of AAD, the body, the 16-byte tag. `rekey`: the key schedule
    // is rebuilt first.
    void seal(const std::uint8_t* nonce, const std::uint8_t* in, std::size_t n, std::uint8_t* out, bool rekey) {
        int len = 0;
        const std::uint8_t aad[13] = {};
        EVP_EncryptInit_ex(ctx, nullptr, nullptr, rekey ? key.data() : nullptr, nonce);
        EVP_EncryptUpdate(ctx, nullptr, &len, aad, sizeof aad);
        EVP_EncryptUpdate(ctx, out, &len, in, static_cast<int>(n));
        EVP_EncryptFinal_ex(ctx, out + len, &len);
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, out + n);
    }
};

struct sodium_aes_sealer {
    crypto_aead_aes256gcm_state state{};
    std::array<std::uint8_t, 32> key{};
    sodium_aes_sealer() { crypto_aead_aes256gcm_beforenm(&state, key.data()); }
    void seal(const std::uint8_t* nonce, const std::uint8_t* in, std::size_t n, std::uint8_t* out, bool rekey) {
        const std::uint8_t aad[13] = {};
        unsigned long long tag_bytes = 0;
        if (rekey) crypto_aead_aes256gcm_beforenm(&state, key.data());
        crypto_aead_aes256gcm_encrypt_detached_afternm(out, out + n, &tag_bytes, in, n, aad, sizeof aad, nullptr, nonce,
                                                       &state);
    }
};

struct sodium_chacha_sealer {
    std::array<std::uint8_t, 32> key{};
    void seal(const std::uint8_t* nonce, const std::uint8_t* in, std::size_t n, std::uint8_t* out, bool) {
        const std::uint8_t aad[13] = {};
        unsigned long long tag_bytes = 0;
        crypto_aead_chacha20poly1305_ietf_encrypt_detached(out, out + n, &tag_bytes, in, n, aad, sizeof aad, nullptr,
                                                           nonce, key.data());
    }
};

// Records sealed per second for `duration_ns`, the nonce counting up as a sequence number does.
template <typename Sealer>
double records_per_second(Sealer& s, std::size_t bytes, std::int64_t duration_ns, bool rekey) {
    std::vector<std::uint8_t> in(bytes, 0x5a), out(bytes + 16);
    std::array<std::uint8_t, 12> nonce{};
    std::uint64_t records = 0;
    const auto start = clock_type::now();
    const auto end = start + std::chrono::nanoseconds(duration_ns);
    auto now = start;
    while (now < end) {
        for (int k = 0; k < 64; ++k) {
            std::memcpy(nonce.data() + 4, &records, sizeof records);
            s.seal(nonce.data(), in.data(), bytes, out.data(), rekey);
            ++records;
        }
        now = clock_type::now();
    }
    return static_cast<double>(records) / std::chrono::duration<double>(now - start).count();
}

}  // namespace

int main(int argc, char** argv) {
    std::int64_t rounds = 3;
    std::int64_t duration_ns = 1'000'000'000;
    std::int64_t cpu = 0;
    std::string sizes_text = "64,1400,16384";
    derp::flag_set flags("aead_bench");
    flags.add_int("rounds", &rounds, "rounds per case; the median is reported");
    flags.add_duration("duration", &duration_ns, "length of one round");
    flags.add_int("cpu", &cpu, "cpu to pin the measuring thread to");
    flags.add_string("sizes", &sizes_text, "record body sizes in bytes, comma-separated");
    if (auto status = derp::bench::parse_flags(flags, argc, argv)) return *status;
    if (sodium_init() < 0) {
        fmt::print(stderr, "aead_bench: sodium_init failed\n");
        return 1;
    }
    derp::bench::pin_this_thread(static_cast<int>(cpu));
    const bool sodium_aes = crypto_aead_aes256gcm_is_available() != 0;
    fmt::print("{:<20} {:<9} {:>7} {:>6} {:>12} {:>8} {:>12}\n", "cipher", "library", "bytes", "keying", "ns/record",
               "GB/s", "vs EVP");
    for (const auto bytes : derp::bench::comma_ints(sizes_text)) {
        const auto size = static_cast<std::size_t>(bytes);
        for (const bool rekey : {false, true}) {
            struct row {
                std::string cipher, library;
                std::function<double()> run;
            };
            evp_sealer aes128(EVP_aes_128_gcm()), aes256(EVP_aes_256_gcm()), chacha(EVP_chacha20_poly1305());
            sodium_aes_sealer s_aes;
            sodium_chacha_sealer s_chacha;
            std::vector<row> rows = {
                {"aes-128-gcm", "openssl", [&] { return records_per_second(aes128, size, duration_ns, rekey); }},
                {"aes-256-gcm", "openssl", [&] { return records_per_second(aes256, size, duration_ns, rekey); }},
                {"chacha20-poly1305", "openssl", [&] { return records_per_second(chacha, size, duration_ns, rekey); }},
                {"chacha20-poly1305", "libsodium", [&] { return records_per_second(s_chacha, size, duration_ns, rekey); }},
            };
            if (sodium_aes)
                rows.insert(rows.begin() + 2, row{"aes-256-gcm", "libsodium",
                                                  [&] { return records_per_second(s_aes, size, duration_ns, rekey); }});
            double evp_ns = 0;
            for (auto& r : rows) {
                std::vector<double> rates;
                for (std::int64_t k = 0; k < rounds; ++k) rates.push_back(r.run());
                const double rate = derp::bench::median(rates);
                const double ns = 1e9 / rate;
                if (r.library == "openssl") evp_ns = ns;
                fmt::print("{:<20} {:<9} {:>7} {:>6} {:>12.1f} {:>8.2f} {:>12.2f}\n", r.cipher, r.library, size,
                           rekey ? "record" : "once", ns, rate * static_cast<double>(size) / 1e9, ns / evp_ns);
            }
        }
    }
    return 0;
}
