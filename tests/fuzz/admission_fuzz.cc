// libFuzzer target for what derpd's client admission reads from the network and the command
// line: the first byte picks the parser (the admission controller's answer, tailscaled's whois
// answer, an -verify-client-url URL, the answer head those requests are read with, and
// tailscaled's status answer for the self-check), the
// rest is its input. Each must return a verdict without crashing.
#include <cstdint>
#include <string>
#include <string_view>

#include "core/admission.hh"
#include "core/assert.hh"
#include "core/http_response.hh"

// Declared here (there is no libFuzzer header) to satisfy -Wmissing-declarations.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace derp;
    if (size == 0) return 0;
    const std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
    switch (data[0] % 5) {
        case 0: {
            const auto verdict = parse_admission_answer(in.substr(0, admission_answer_bytes_max));
            DERP_ASSERT(verdict == admission_answer::allow || verdict == admission_answer::deny ||
                        verdict == admission_answer::invalid);
            break;
        }
        case 1: (void)whois_answer_valid(in); break;
        case 2:
            if (auto url = parse_http_url(in)) {
                DERP_ASSERT(!url->host.empty());
                DERP_ASSERT(url->port != 0);
                DERP_ASSERT(!url->target.empty() && url->target.front() == '/');
            }
            break;
        case 3: {
            http_response_head head;
            const auto verdict = parse_http_response_head(in, head);
            if (verdict.state == http_response_parse::complete) DERP_ASSERT(head.head_bytes <= in.size());
            break;
        }
        case 4: (void)status_self_key(in); break;
    }
    return 0;
}
