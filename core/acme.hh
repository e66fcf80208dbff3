// The ACME protocol's documents (RFC 8555) as derpd's ACME client reads and writes them: the
// directory, orders, authorizations, challenges and problem documents parsed into structs with
// size limits, the JSON payloads and JWS protected headers it sends, the key authorization
// (RFC 8555 8.1), https URLs, Retry-After, and when to renew. Pure: bytes in, verdict out. No
// hashing or signing here (crypto/acme_crypto.hh), no sockets (crypto/https_client.hh).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.hh"

namespace derp::acme {

// A JSON document from the ACME server is refused beyond this size (Let's Encrypt's largest,
// an order with 100 names, is about 10 KiB).
inline constexpr std::size_t document_bytes_max = 64 * 1024;
// A certificate chain (PEM): a leaf and a few intermediates are under 10 KiB.
inline constexpr std::size_t certificate_bytes_max = 256 * 1024;
// URLs in documents and headers; Let's Encrypt's are under 100 characters.
inline constexpr std::size_t url_bytes_max = 2048;
// Authorizations in one order, challenges in one authorization.
inline constexpr std::size_t list_entries_max = 100;
// A problem document's detail as quoted in derpd's log.
inline constexpr std::size_t detail_chars_max = 1024;

// RFC 8555 7.1.6 status values; unknown for anything else (refused by the caller).
enum class status : std::uint8_t { pending, ready, processing, valid, invalid, expired, deactivated, revoked, unknown };
std::string_view to_string(status s) noexcept;

// RFC 7807 / RFC 8555 6.7: "urn:ietf:params:acme:error:badNonce" and a human detail.
struct problem {
    std::string type;
    std::string detail;
    std::int64_t http_status = 0;
    // "type: detail", as derpd's log quotes it.
    std::string to_string() const;
};

// RFC 8555 7.1.1.
struct directory {
    std::string new_nonce;
    std::string new_account;
    std::string new_order;
    std::string terms_of_service;  // meta.termsOfService, when given
};

struct challenge {
    std::string type;   // "http-01", "tls-alpn-01", "dns-01", ...
    std::string url;
    std::string token;  // base64url, checked (token_is_valid)
    status state = status::unknown;
    std::optional<problem> error;
};

// RFC 8555 7.1.4.
struct authorization {
    status state = status::unknown;
    std::string identifier_type;   // "dns"
    std::string identifier_value;  // the hostname
    std::vector<challenge> challenges;
};

// RFC 8555 7.1.3.
struct order {
    status state = status::unknown;
    std::vector<std::string> authorizations;  // URLs
    std::string finalize;
    std::string certificate;  // once valid
    std::optional<problem> error;
};

// Each parser refuses a document that is not JSON, too large, or lacks what derpd needs, with
// a sentence saying what was wrong.
result<directory, std::string> parse_directory(std::string_view text);
result<order, std::string> parse_order(std::string_view text);
result<authorization, std::string> parse_authorization(std::string_view text);
result<challenge, std::string> parse_challenge(std::string_view text);
result<problem, std::string> parse_problem(std::string_view text);
// An account object (RFC 8555 7.1.2): only its status matters here.
result<status, std::string> parse_account_status(std::string_view text);

// RFC 8555 8.1: a token is base64url without padding; derpd takes 16..256 characters (the
// RFC asks for at least 128 bits of entropy). It is also a path component on port 80.
bool token_is_valid(std::string_view token) noexcept;
// token "." base64url(JWK thumbprint).
std::string key_authorization(std::string_view token, std::string_view thumbprint_b64url);

// Payloads, compact JSON. An email is refused unless it looks like one address (no spaces,
// commas or control characters: it lands in a URL).
bool email_is_valid(std::string_view email) noexcept;
std::string new_account_payload(std::string_view email);  // empty email: no contact
std::string new_order_payload(std::string_view hostname);
std::string finalize_payload(std::string_view csr_der_b64url);
// RFC 8555 6.2: {"alg":"ES256","nonce":..,"url":..} plus "jwk" (a JSON object, verbatim) for
// newAccount, else "kid" (the account URL).
std::string protected_header(std::string_view nonce, std::string_view url, std::string_view jwk_json,
                             std::string_view kid);

// https://host[:port]/path?query. Only https (RFC 8555 6.1). Host names, IPv4 and [IPv6].
struct https_url {
    std::string host;       // without brackets
    std::uint16_t port = 443;
    std::string target;     // path and query, "/" when empty
    std::string host_header;  // host[:port] as the Host header wants it
};
result<https_url, std::string> parse_https_url(std::string_view url);

// Retry-After (RFC 9110 10.2.3): delay-seconds or an IMF-fixdate; seconds to wait from
// now_unix, at least 0. Nothing for anything else.
std::optional<std::int64_t> parse_retry_after(std::string_view value, std::int64_t now_unix) noexcept;

// When to renew a certificate valid from not_before to not_after (Unix seconds): when a third
// of its lifetime is left, moved earlier by jitter_fraction (0..1) times a tenth of the
// lifetime so that many servers with certificates from one day do not renew in one minute.
std::int64_t renewal_time_unix(std::int64_t not_before, std::int64_t not_after, double jitter_fraction) noexcept;

// Exponential backoff after `failures` consecutive failures: base doubled each time, capped.
std::int64_t backoff_ns(std::uint32_t failures, std::int64_t base_ns, std::int64_t cap_ns) noexcept;

}  // namespace derp::acme
