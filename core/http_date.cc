// IMF-fixdate from Unix seconds, by Howard Hinnant's days-to-civil algorithm (no gmtime, no tz).
#include "core/http_date.hh"

#include "core/assert.hh"

namespace derp {

namespace {

constexpr std::string_view weekday_names = "SunMonTueWedThuFriSat";
constexpr std::string_view month_names = "JanFebMarAprMayJunJulAugSepOctNovDec";

std::int64_t floor_div(std::int64_t a, std::int64_t b) noexcept {
    return a / b - ((a % b != 0) && ((a < 0) != (b < 0)) ? 1 : 0);
}

void put2(char* p, std::int64_t v) noexcept {
    p[0] = static_cast<char>('0' + v / 10);
    p[1] = static_cast<char>('0' + v % 10);
}

}  // namespace

http_date format_http_date(std::int64_t unix_seconds) noexcept {
    const std::int64_t days = floor_div(unix_seconds, 86400);
    const std::int64_t secs = unix_seconds - days * 86400;

    // civil_from_days: era-based conversion of days since 1970-01-01.
    const std::int64_t z = days + 719468;
    const std::int64_t era = floor_div(z, 146097);
    const std::int64_t doe = z - era * 146097;
    const std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const std::int64_t mp = (5 * doy + 2) / 153;
    const std::int64_t day = doy - (153 * mp + 2) / 5 + 1;
    const std::int64_t month = mp < 10 ? mp + 3 : mp - 9;
    const std::int64_t year = yoe + era * 400 + (month <= 2 ? 1 : 0);
    DERP_ASSERT(year >= 0 && year <= 9999);
    const std::int64_t weekday = floor_div(days + 4, 7) * -7 + days + 4;  // 1970-01-01 was a Thursday

    http_date out;
    char* p = out.text.data();
    const auto wd = static_cast<std::size_t>(weekday) * 3;
    const auto mo = static_cast<std::size_t>(month - 1) * 3;
    p[0] = weekday_names[wd];
    p[1] = weekday_names[wd + 1];
    p[2] = weekday_names[wd + 2];
    p[3] = ',';
    p[4] = ' ';
    put2(p + 5, day);
    p[7] = ' ';
    p[8] = month_names[mo];
    p[9] = month_names[mo + 1];
    p[10] = month_names[mo + 2];
    p[11] = ' ';
    put2(p + 12, year / 100);
    put2(p + 14, year % 100);
    p[16] = ' ';
    put2(p + 17, secs / 3600);
    p[19] = ':';
    put2(p + 20, secs / 60 % 60);
    p[22] = ':';
    put2(p + 23, secs % 60);
    const std::string_view gmt = " GMT";
    for (std::size_t i = 0; i < gmt.size(); ++i) p[25 + i] = gmt[i];
    return out;
}

}  // namespace derp
