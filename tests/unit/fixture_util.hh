// Test helpers shared by the unit tests: hex conversion and loading of the recorded DERP
// fixtures (tests/fixtures, found through $DERP_FIXTURES_DIR). Test code only; it may throw.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "core/key.hh"

namespace derp::test {

using bytes = std::vector<std::uint8_t>;

inline bytes from_hex(std::string_view hex) {
    bytes out;
    int hi = -1;
    for (char c : hex) {
        int v;
        if (c >= '0' && c <= '9') v = c - '0';
        else if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v = c - 'A' + 10;
        else if (c == ' ' || c == '\n' || c == '\t') continue;
        else throw std::invalid_argument("bad hex digit");
        if (hi < 0) {
            hi = v;
        } else {
            out.push_back(static_cast<std::uint8_t>(hi * 16 + v));
            hi = -1;
        }
    }
    if (hi >= 0) throw std::invalid_argument("odd number of hex digits");
    return out;
}

inline std::string to_hex(const std::uint8_t* p, std::size_t n) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string out;
    for (std::size_t i = 0; i < n; ++i) {
        out += digits[p[i] >> 4];
        out += digits[p[i] & 0xf];
    }
    return out;
}
template <typename Container>
std::string to_hex(const Container& c) {
    return to_hex(reinterpret_cast<const std::uint8_t*>(c.data()), c.size());
}

inline bytes to_bytes(std::string_view s) { return bytes(s.begin(), s.end()); }
inline std::string_view as_text(const bytes& b) {
    return {reinterpret_cast<const char*>(b.data()), b.size()};
}

inline std::filesystem::path fixtures_dir() {
    if (const char* env = std::getenv("DERP_FIXTURES_DIR"); env != nullptr && *env != '\0') return env;
    return "tests/fixtures";
}

inline std::string read_text(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        throw std::runtime_error("cannot open fixture " + path.string() +
                                 " (set DERP_FIXTURES_DIR to the fixtures folder)");
    }
    std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    // A recorded expectation is never empty: an empty file would make every comparison
    // against it vacuous.
    if (text.empty()) throw std::runtime_error("fixture " + path.string() + " is empty");
    return text;
}

inline bytes read_binary(const std::string& relative) { return to_bytes(read_text(fixtures_dir() / relative)); }

// A fixture .hex stream: every non-comment line is hex; concatenated and decoded.
inline bytes read_hex_stream(const std::string& relative) {
    std::istringstream lines(read_text(fixtures_dir() / relative));
    std::string line, hex;
    while (std::getline(lines, line)) {
        if (!line.empty() && line[0] != '#') hex += line;
    }
    return from_hex(hex);
}

// The keys of spec section 11.1 (derived as clamp(SHA-256(label))), shared by the tests that
// check the spec's vectors byte for byte.
namespace spec_keys {
inline const private_key server_private =
    *private_key::from_hex("d88a51dc98d0f19c002918706f8b825fbe90cf3e1e078195191ed9367d7d5664");
inline const node_key server_public =
    *node_key::from_hex("d934d6cc4aa36eb88ae522b9f408da1931a6ea30ca115a353c7b121d00724526");
inline const private_key client_private =
    *private_key::from_hex("701f030457528c2011662ef839667ac6b631383e714f1c30ff9fec9859f53653");
inline const node_key client_public =
    *node_key::from_hex("b33471873f4a323644123df2f01bbab228629aad41038a3b7cf9623afaf21a13");
inline const node_key client2_public =
    *node_key::from_hex("249035a08e5aa885caa1d3e45e51c717e63e88c504f22bac9629c5fd4a33865a");
}  // namespace spec_keys

}  // namespace derp::test
