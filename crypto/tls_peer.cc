// The checks a TLS client makes on a server's chain beyond OpenSSL's own verification (see
// crypto/tls.hh): derper's meta certificate and the `sha256-raw:` pin. Shared by the DERP
// clients (session::feed) and derpprobe, which runs its own SSL object; no I/O here.
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <fmt/format.h>

#include "crypto/tls.hh"

namespace derp::tls {
namespace {

std::string subject_text(X509* cert) {
    char line[512] = {};
    X509_NAME_oneline(X509_get_subject_name(cert), line, sizeof line);
    return line;
}

}  // namespace

std::optional<node_key> meta_certificate_key(X509* cert) noexcept {
    if (cert == nullptr) return std::nullopt;
    // The one CN, taken with its length: text with an embedded NUL or a second CN is not
    // derper's.
    X509_NAME* subject = X509_get_subject_name(cert);
    const int at = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    if (at < 0 || X509_NAME_get_index_by_NID(subject, NID_commonName, at) >= 0) return std::nullopt;
    const ASN1_STRING* cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, at));
    constexpr std::string_view prefix = "derpkey";
    if (cn == nullptr || ASN1_STRING_length(cn) != static_cast<int>(prefix.size() + 64)) return std::nullopt;
    const std::string_view text(reinterpret_cast<const char*>(ASN1_STRING_get0_data(cn)), prefix.size() + 64);
    if (!text.starts_with(prefix)) return std::nullopt;
    const long serial = ASN1_INTEGER_get(X509_get0_serialNumber(cert));
    if (serial <= 0 || serial > 255) return std::nullopt;
    return node_key::from_hex(text.substr(prefix.size()));
}

pin_verdict check_pinned_chain(const ssl_st* ssl, const std::array<std::uint8_t, 32>& pin, std::string_view name) noexcept {
    pin_verdict v;
    v.peer = SSL_get0_peer_certificate(ssl);
    if (v.peer == nullptr) {
        v.problem = pin_problem::no_certificate;
        v.detail = "the server presented no certificate";
        return v;
    }
    if (certificate_sha256(v.peer) != pin) {
        v.problem = pin_problem::mismatch;
        v.detail = "server certificate does not match the pinned sha256-raw hash";
        return v;
    }
    // On the client side the chain starts with the peer certificate; it is skipped once, and
    // everything else must be meta (a second copy of the pinned certificate is not).
    STACK_OF(X509)* chain = SSL_get_peer_cert_chain(ssl);
    bool skipped_peer = false;
    for (int k = 0; chain != nullptr && k < sk_X509_num(chain); ++k) {
        X509* cert = sk_X509_value(chain, k);
        if (!skipped_peer && X509_cmp(cert, v.peer) == 0) {
            skipped_peer = true;
            continue;
        }
        if (meta_certificate_key(cert)) continue;
        v.problem = pin_problem::foreign_certificate;
        v.offending = cert;
        v.detail = fmt::format("the server's chain holds {} besides the pinned certificate; a sha256-raw pin allows "
                               "only derper's meta certificate beside it",
                               subject_text(cert));
        return v;
    }
    if (!name.empty()) {
        const std::string text(name);
        // An IP literal is matched against IP SANs; anything else (-2: not an address) as a host.
        int matched = X509_check_ip_asc(v.peer, text.c_str(), 0);
        if (matched == -2) matched = X509_check_host(v.peer, text.data(), text.size(), 0, nullptr);
        if (matched != 1) {
            v.problem = pin_problem::wrong_name;
            v.detail = "pinned server certificate is not valid for " + text;
            return v;
        }
    }
    if (X509_cmp_current_time(X509_get0_notBefore(v.peer)) > 0 || X509_cmp_current_time(X509_get0_notAfter(v.peer)) < 0) {
        v.problem = pin_problem::outside_validity;
        v.detail = "pinned server certificate is outside its validity period";
    }
    return v;
}

}  // namespace derp::tls
