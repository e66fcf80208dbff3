// Go encoding/json struct-decoding rules on top of nlohmann::json's SAX parser; see go_json.hh.
#include "core/go_json.hh"

#include <nlohmann/json.hpp>

#include <limits>
#include <string>

namespace derp {

namespace {

// One step of Go's foldName over a key: ASCII upper-cased; the two non-ASCII runes whose
// simple-fold orbit contains an ASCII letter map to it; any other byte sequence yields '\0',
// which matches no field name.
char fold_next(std::string_view key, std::size_t& i) noexcept {
    const auto c = static_cast<unsigned char>(key[i]);
    if (c < 0x80) {
        ++i;
        return (c >= 'a' && c <= 'z') ? static_cast<char>(c - ('a' - 'A')) : static_cast<char>(c);
    }
    if (key.substr(i, 2) == "\xc5\xbf") {  // U+017F LATIN SMALL LETTER LONG S
        i += 2;
        return 'S';
    }
    if (key.substr(i, 3) == "\xe2\x84\xaa") {  // U+212A KELVIN SIGN
        i += 3;
        return 'K';
    }
    i = key.size();
    return '\0';
}

bool go_fold_equal(std::string_view key, std::string_view field) noexcept {
    std::size_t i = 0;
    std::size_t j = 0;
    while (i < key.size() && j < field.size()) {
        const char a = fold_next(key, i);
        auto b = static_cast<unsigned char>(field[j++]);
        if (b >= 'a' && b <= 'z') b = static_cast<unsigned char>(b - ('a' - 'A'));
        if (a == '\0' || static_cast<unsigned char>(a) != b) return false;
    }
    return i == key.size() && j == field.size();
}

class object_sax {
public:
    using number_integer_t = nlohmann::json::number_integer_t;
    using number_unsigned_t = nlohmann::json::number_unsigned_t;
    using number_float_t = nlohmann::json::number_float_t;
    using string_t = nlohmann::json::string_t;
    using binary_t = nlohmann::json::binary_t;

    object_sax(std::span<const std::string_view> fields, json_field_handler handler,
               void* context) noexcept
        : _fields(fields), _handler(handler), _context(context) {}

    bool ok() const noexcept { return _ok; }

    bool null() { return value(json_value{}); }
    bool boolean(bool b) {
        json_value v;
        v.kind = json_kind::boolean;
        v.boolean = b;
        return value(v);
    }
    bool number_integer(number_integer_t n) {
        json_value v;
        v.kind = json_kind::integer;
        v.fits_int64 = true;
        v.int64 = n;
        v.fits_uint64 = n >= 0;
        v.uint64 = n >= 0 ? static_cast<std::uint64_t>(n) : 0;
        return value(v);
    }
    bool number_unsigned(number_unsigned_t n) {
        json_value v;
        v.kind = json_kind::integer;
        v.fits_uint64 = true;
        v.uint64 = n;
        v.fits_int64 = n <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
        v.int64 = v.fits_int64 ? static_cast<std::int64_t>(n) : 0;
        return value(v);
    }
    bool number_float(number_float_t f, const string_t&) {
        json_value v;
        v.kind = json_kind::floating;
        v.floating = f;
        return value(v);
    }
    bool string(string_t& s) {
        json_value v;
        v.kind = json_kind::string;
        v.string = s;
        return value(v);
    }
    bool binary(binary_t&) { return fail(); }  // not produced by the JSON reader
    bool start_object(std::size_t) { return start_aggregate(true); }
    bool start_array(std::size_t) { return start_aggregate(false); }
    bool end_object() { return end_aggregate(); }
    bool end_array() { return end_aggregate(); }
    bool key(string_t& k) {
        if (_depth == 1) _field = match_go_json_field(k, _fields);
        return true;
    }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) {
        return fail();
    }

private:
    bool fail() noexcept {
        _ok = false;
        return false;
    }

    bool value(const json_value& v) noexcept {
        if (_depth == 0) {
            // Go: null into a struct is a no-op; any other non-object is a type error.
            return v.kind == json_kind::null ? true : fail();
        }
        if (_depth == 1 && _field < _fields.size()) {
            if (!_handler(_context, _field, v)) return fail();
        }
        return true;
    }

    bool start_aggregate(bool is_object) noexcept {
        if (_depth == 0 && !is_object) return fail();
        if (_depth == 1 && _field < _fields.size()) {
            json_value v;
            v.kind = json_kind::aggregate;
            if (!_handler(_context, _field, v)) return fail();
        }
        ++_depth;
        return true;
    }

    bool end_aggregate() noexcept {
        --_depth;
        return true;
    }

    std::span<const std::string_view> _fields;
    json_field_handler _handler;
    void* _context;
    std::size_t _depth = 0;
    std::size_t _field = 0;
    bool _ok = true;
};

}  // namespace

std::size_t match_go_json_field(std::string_view key,
                                std::span<const std::string_view> field_names) noexcept {
    for (std::size_t i = 0; i < field_names.size(); ++i) {
        if (go_fold_equal(key, field_names[i])) return i;
    }
    return field_names.size();
}

bool decode_json_object(std::string_view text, std::span<const std::string_view> field_names,
                        json_field_handler handler, void* context) noexcept {
    // nlohmann's lexer takes a NUL byte for the end of input, so "{}\0junk" would pass. No
    // valid JSON text holds a raw NUL (not even inside a string), so reject it up front.
    if (text.find('\0') != std::string_view::npos) return false;
    object_sax sax(field_names, handler, context);
    // The SAX parser reports syntax errors through parse_error instead of throwing; strict mode
    // rejects trailing non-whitespace like Go's Unmarshal. Only std::bad_alloc could escape,
    // which terminates (this function is noexcept) like any other allocation failure here.
    const bool parsed = nlohmann::json::sax_parse(text.begin(), text.end(), &sax,
                                                  nlohmann::json::input_format_t::json, true);
    return parsed && sax.ok();
}

}  // namespace derp
