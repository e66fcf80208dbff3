// libFuzzer target for what derpd's ACME client reads from the network: the first byte picks
// the parser (directory, order, authorization, challenge, problem, account, https URL,
// Retry-After, HTTP response head, chunked body), the rest is its input. Each must return a
// verdict without crashing, and what it accepts must respect the documented limits.
#include <cstdint>
#include <string>
#include <string_view>

#include "core/acme.hh"
#include "core/assert.hh"
#include "core/http_response.hh"

// Declared here (there is no libFuzzer header) to satisfy -Wmissing-declarations.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace derp;
    if (size == 0) return 0;
    const std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
    switch (data[0] % 10) {
        case 0:
            if (auto d = acme::parse_directory(in)) {
                DERP_ASSERT(acme::parse_https_url(d->new_nonce).has_value());
                DERP_ASSERT(acme::parse_https_url(d->new_order).has_value());
            }
            break;
        case 1:
            if (auto o = acme::parse_order(in)) {
                DERP_ASSERT(o->authorizations.size() <= acme::list_entries_max);
                DERP_ASSERT(o->state != acme::status::unknown);
                DERP_ASSERT(o->state != acme::status::valid || !o->certificate.empty());
            }
            break;
        case 2:
            if (auto a = acme::parse_authorization(in)) {
                DERP_ASSERT(a->challenges.size() <= acme::list_entries_max);
                for (const auto& c : a->challenges)
                    if (c.type == "http-01" || c.type == "tls-alpn-01") DERP_ASSERT(acme::token_is_valid(c.token));
            }
            break;
        case 3:
            if (auto c = acme::parse_challenge(in)) DERP_ASSERT(!c->url.empty());
            break;
        case 4:
            if (auto p = acme::parse_problem(in)) DERP_ASSERT(p->detail.size() <= acme::detail_chars_max + 3);
            break;
        case 5: (void)acme::parse_account_status(in); break;
        case 6:
            if (auto u = acme::parse_https_url(in)) {
                DERP_ASSERT(!u->host.empty());
                DERP_ASSERT(!u->target.empty() && u->target.front() == '/');
            }
            break;
        case 7:
            if (auto s = acme::parse_retry_after(in, 1'700'000'000)) DERP_ASSERT(*s >= 0);
            break;
        case 8: {
            http_response_head head;
            const auto verdict = parse_http_response_head(in, head);
            if (verdict.state == http_response_parse::complete) {
                DERP_ASSERT(head.head_bytes <= in.size() && head.head_bytes <= http_response_head_bytes_max);
                DERP_ASSERT(head.status >= 100 && head.status <= 999);
                DERP_ASSERT(head.fields.size() <= http_response_fields_max);
            }
            break;
        }
        case 9: {
            std::string body;
            const auto verdict = decode_chunked(in, 4096, body);
            DERP_ASSERT(body.size() <= 4096);
            (void)verdict;
            break;
        }
    }
    return 0;
}
