// libFuzzer target for the HTTP request-head parser: every verdict is consistent (views inside
// the input, consumed count within it, prefixes need more, the size limit is exact) and the
// upgrade and body-framing decisions never misbehave on what it accepts.
#include <cstdint>
#include <span>
#include <string_view>

#include "core/assert.hh"
#include "core/derp_upgrade.hh"
#include "core/http_request.hh"

namespace {

bool inside(std::string_view view, std::span<const std::uint8_t> in) {
    if (view.empty()) return true;
    const auto* begin = reinterpret_cast<const char*>(in.data());
    // A few views (path "*", empty) may point at constants; all others must point into in.
    return view.data() >= begin && view.data() + view.size() <= begin + in.size();
}

bool has_line_break(std::string_view s) {
    return s.find('\n') != std::string_view::npos || s.find('\r') != std::string_view::npos;
}

}  // namespace

// Declared here (there is no libFuzzer header) to satisfy -Wmissing-declarations.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace derp;
    const std::span<const std::uint8_t> in(data, size);
    http_request req;
    const http_parse verdict = parse_http_request(in, req);
    if (verdict.status == http_parse_status::error) {
        DERP_ASSERT(verdict.error_status == 400 || verdict.error_status == 431 || verdict.error_status == 505);
        std::array<std::uint8_t, http_error_response_bytes_max> out{};
        DERP_ASSERT(encode_http_error_response(out, verdict.error_status, verdict.error_text) <= out.size());
        return 0;
    }
    if (verdict.status == http_parse_status::need_more) {
        DERP_ASSERT(size <= http_head_bytes_max);
        return 0;
    }
    DERP_ASSERT(req.head_bytes > 0 && req.head_bytes <= size && req.head_bytes <= http_head_bytes_max);
    DERP_ASSERT(inside(req.method, in) && inside(req.target, in) && inside(req.path, in) && inside(req.query, in));
    DERP_ASSERT(!req.method.empty() && !req.target.empty());
    DERP_ASSERT(req.header_count <= http_headers_max);
    for (const auto& h : req.header_list()) {
        DERP_ASSERT(inside(h.name, in) && inside(h.value, in));
        DERP_ASSERT(!h.name.empty() && !has_line_break(h.name) && !has_line_break(h.value));
        DERP_ASSERT(req.header(h.name).has_value());
    }
    // The head alone parses the same; any shorter prefix needs more; the limit is exact.
    http_request again;
    DERP_ASSERT(parse_http_request(in.first(req.head_bytes), again).status == http_parse_status::complete);
    DERP_ASSERT(again.head_bytes == req.head_bytes && again.header_count == req.header_count);
    DERP_ASSERT(parse_http_request(in.first(req.head_bytes - 1), again).status == http_parse_status::need_more);
    const http_parse limited = parse_http_request(in, again, req.head_bytes - 1);
    DERP_ASSERT(limited.status == http_parse_status::error && limited.error_status == 431);

    (void)http_request_body(req);
    const derp_upgrade up = classify_derp_upgrade(req);
    if (up.kind != upgrade_kind::none) DERP_ASSERT(up.weird_upgrade.empty());
    return 0;
}
