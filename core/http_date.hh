// IMF-fixdate formatting for HTTP Date headers ("Wed, 25 Nov 2026 11:44:01 GMT"), from a
// caller-supplied Unix time so that response builders stay pure. Not a clock.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace derp {

inline constexpr std::size_t http_date_chars = 29;

struct http_date {
    std::array<char, http_date_chars> text{};
    std::string_view view() const noexcept { return {text.data(), text.size()}; }
};

// Proleptic Gregorian UTC, years 0000-9999 (asserted).
http_date format_http_date(std::int64_t unix_seconds) noexcept;

}  // namespace derp
