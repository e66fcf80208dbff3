// Decoding of small flat JSON objects the way Go's encoding/json fills a struct: keys matched
// to field names with Go's case folding, unknown keys (of any shape) ignored, members applied in
// document order, trailing garbage an error, top-level null a no-op. Used for ClientInfo,
// ServerInfo, the key file, and other small JSON documents derper reads. Not a DOM and not a
// general JSON library; the tokenizer is nlohmann::json's SAX parser, which never throws here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>

namespace derp {

enum class json_kind : std::uint8_t {
    null,
    boolean,
    integer,    // an integer literal; see fits_int64 / fits_uint64
    floating,   // a literal with a fraction or exponent, or one too large for 64 bits
    string,
    aggregate,  // an object or array (its contents are skipped)
};

struct json_value {
    json_kind kind = json_kind::null;
    bool boolean = false;
    bool fits_int64 = false;
    bool fits_uint64 = false;
    std::int64_t int64 = 0;
    std::uint64_t uint64 = 0;
    double floating = 0;
    std::string_view string;  // decoded; valid only during the callback
};

// Returns the index of the field whose name matches key under Go's folding (ASCII case, plus
// U+017F LATIN SMALL LETTER LONG S ~ 's' and U+212A KELVIN SIGN ~ 'k'), or field_names.size().
std::size_t match_go_json_field(std::string_view key, std::span<const std::string_view> field_names) noexcept;

using json_field_handler = bool (*)(void* context, std::size_t field, const json_value& value) noexcept;

// Calls handler for every top-level member whose key matches a field, in document order
// (duplicates included: the last one wins if the handler overwrites). True when text is one
// JSON object (or null) with only trailing whitespace and every handler call returned true.
// Known divergence from Go: invalid UTF-8 and lone surrogate escapes in strings are errors here
// (Go substitutes U+FFFD).
bool decode_json_object(std::string_view text, std::span<const std::string_view> field_names,
                        json_field_handler handler, void* context) noexcept;

template <typename Handler>
bool decode_json_object(std::string_view text, std::span<const std::string_view> field_names,
                        Handler& handler) noexcept {
    static_assert(std::is_nothrow_invocable_r_v<bool, Handler&, std::size_t, const json_value&>);
    return decode_json_object(
        text, field_names,
        [](void* context, std::size_t field, const json_value& value) noexcept {
            return (*static_cast<Handler*>(context))(field, value);
        },
        &handler);
}

}  // namespace derp
