// The tls probe (see probe_tls.hh): a blocking OpenSSL handshake over a non-blocking socket on
// the probe's worker thread, from the same client context (crypto/tls) the DERP clients use, so
// that the chain it inspects is the one the mesh probe's clients accepted. The handshake runs on
// our own SSL object rather than a tls::session because the probe needs the whole peer chain
// (every certificate's dates, the pin), which a session does not expose.
#include "probe/probe_tls.hh"

#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <charconv>
#include <cmath>
#include <cstring>
#include <ctime>
#include <memory>
#include <vector>

#include <fmt/format.h>

#include "probe/probe_net.hh"
#include "crypto/tls.hh"
#include "core/flags.hh"

namespace derp::probe {
namespace {

std::int64_t asn1_time_unix(const ASN1_TIME* t) {
    std::tm when{};
    if (t == nullptr || ASN1_TIME_to_tm(t, &when) != 1) return 0;
    return static_cast<std::int64_t>(timegm(&when));
}

std::string format_utc(std::int64_t unix_secs) {
    const auto t = static_cast<std::time_t>(unix_secs);
    std::tm when{};
    gmtime_r(&t, &when);
    char text[64];
    std::strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S UTC", &when);
    return text;
}

std::string subject_of(X509* cert) {
    char cn[256] = {};
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn) > 0)
        return fmt::format("CN={}", cn);
    char line[512] = {};
    X509_NAME_oneline(X509_get_subject_name(cert), line, sizeof line);
    return line;
}

// derper's fast-start certificate (spec 2.15), by the same test the DERP clients use.
bool is_meta_certificate(X509* cert) { return tls::meta_certificate_key(cert).has_value(); }

// derpprobe's test for "self-signed" (SubjectKeyId == AuthorityKeyId, both absent counting as
// equal); it skips such certificates so that the meta certificate never raises an alert.
bool key_ids_equal(X509* cert) {
    const ASN1_OCTET_STRING* ski = X509_get0_subject_key_id(cert);
    const ASN1_OCTET_STRING* aki = X509_get0_authority_key_id(cert);
    if (ski == nullptr || aki == nullptr) return ski == nullptr && aki == nullptr;
    return ASN1_STRING_length(ski) == ASN1_STRING_length(aki) &&
           std::memcmp(ASN1_STRING_get0_data(ski), ASN1_STRING_get0_data(aki),
                       static_cast<std::size_t>(ASN1_STRING_length(ski))) == 0;
}

std::string hex_of(const unsigned char* bytes, std::size_t length) {
    std::string text;
    for (std::size_t i = 0; i < length; ++i) text += fmt::format("{:02x}", bytes[i]);
    return text;
}

std::string sha256_hex(X509* cert) {
    unsigned char* der = nullptr;
    const int length = i2d_X509(cert, &der);
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_length = 0;
    if (length > 0) EVP_Digest(der, static_cast<std::size_t>(length), digest, &digest_length, EVP_sha256(), nullptr);
    OPENSSL_free(der);
    return hex_of(digest, digest_length);
}

// "2 days" (whole days, rounded down: 2 days 23 hours is "2 days"), or hours and minutes under a
// day: what an operator reads in an alert.
std::string format_time_left(double secs) {
    if (secs >= 86400) {
        const auto days = static_cast<std::int64_t>(secs / 86400);
        return fmt::format("{} day{}", days, days == 1 ? "" : "s");
    }
    return format_go_duration(static_cast<std::int64_t>(secs) * 1'000'000'000);
}

struct ssl_closer {
    SSL* ssl = nullptr;
    int fd = -1;
    ssl_closer() = default;
    ssl_closer(const ssl_closer&) = delete;
    ssl_closer& operator=(const ssl_closer&) = delete;
    ~ssl_closer() {
        if (ssl != nullptr) {
            // One close_notify, no wait for the answer (derper does not need one).
            SSL_shutdown(ssl);
            SSL_free(ssl);
        }
        if (fd >= 0) ::close(fd);
        ERR_clear_error();
    }
};

}  // namespace

result<tls_policy, std::string> tls_policy_for(const derp_node& node, const std::string& ca_file) {
    tls_policy p;
    p.sni = node.host_name;
    p.verify_name = node.host_name;
    p.options.server_name = node.host_name;
    if (node.insecure_for_tests) {
        p.verify = tls_verify::insecure;
        p.options.verify = tls::context::verify_mode::insecure;
        return p;
    }
    if (node.cert_name.starts_with("sha256-raw:")) {
        p.verify = tls_verify::pinned;
        p.options.verify = tls::context::verify_mode::pinned;
        const std::string_view hex = std::string_view(node.cert_name).substr(11);
        for (std::size_t i = 0; i < p.options.pinned_sha256.size(); ++i) {
            unsigned value = 0;
            const auto [end, ec] = std::from_chars(hex.data() + 2 * i, hex.data() + 2 * i + 2, value, 16);
            if (ec != std::errc() || end != hex.data() + 2 * i + 2)
                return unexpected(fmt::format("CertName {}: not 64 hex digits", node.cert_name));
            p.options.pinned_sha256[i] = static_cast<std::uint8_t>(value);
        }
        return p;
    }
    // Go's tlsdial.SetConfigExpectedCert: SNI stays HostName, the chain is verified for CertName.
    // (The DERP client library sends its verification name as SNI, so its clients send CertName.)
    if (!node.cert_name.empty()) {
        p.verify_name = node.cert_name;
        p.options.server_name = node.cert_name;
    }
    p.verify = tls_verify::chain;
    p.options.verify = tls::context::verify_mode::system;
    p.options.ca_file = ca_file;
    return p;
}

namespace {

// A completed, verified handshake (pin included); dates are checked by the caller.
struct tls_connection {
    ssl_closer conn;
    tls_policy policy;
    std::string pin_note;
    X509* leaf = nullptr;            // owned by conn.ssl
    STACK_OF(X509)* chain = nullptr;  // likewise; on the client side the leaf is in it
};

result<std::unique_ptr<tls_connection>, std::string> dial_tls(const derp_node& node, const std::string& ca_file,
                                                              const run_context& ctx) {
    auto policy = tls_policy_for(node, ca_file);
    if (!policy) return unexpected(policy.error());
    auto context = tls::context::make_client(policy->options);
    if (!context) return unexpected("TLS client setup: " + context.error());
    const auto port = static_cast<std::uint16_t>(node.derp_port != 0 ? node.derp_port : 443);
    auto addresses = node_addresses(node, port);
    if (!addresses) return unexpected(addresses.error());
    auto fd = connect_tcp(*addresses, ctx);
    if (!fd) return unexpected(fd.error());

    auto t = std::make_unique<tls_connection>();
    t->policy = std::move(policy).value();
    ssl_closer& conn = t->conn;
    conn.fd = *fd;
    ERR_clear_error();
    conn.ssl = SSL_new(context.value()->native());
    if (conn.ssl == nullptr) return unexpected("SSL_new: " + tls::openssl_errors());
    SSL_set_fd(conn.ssl, conn.fd);
    if (!is_ip_literal(t->policy.sni)) {
        // OpenSSL's macro casts in C style.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wold-style-cast"
        SSL_set_tlsext_host_name(conn.ssl, t->policy.sni.c_str());
#pragma GCC diagnostic pop
    }
    if (t->policy.verify == tls_verify::chain) {
        if (is_ip_literal(t->policy.verify_name))
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(conn.ssl), t->policy.verify_name.c_str());
        else
            SSL_set1_host(conn.ssl, t->policy.verify_name.c_str());
    }
    const std::string peer = fmt::format("{}:{}", node.host_name, port);
    for (;;) {
        const int r = SSL_connect(conn.ssl);
        if (r == 1) break;
        const int e = SSL_get_error(conn.ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            if (!wait_fd(conn.fd, e == SSL_ERROR_WANT_WRITE, ctx))
                return unexpected(ctx.stopping() ? std::string("stopped") : fmt::format("TLS handshake with {}: timed out", peer));
            continue;
        }
        const long verify = SSL_get_verify_result(conn.ssl);
        if (t->policy.verify == tls_verify::chain && verify != X509_V_OK)
            return unexpected(fmt::format("TLS handshake with {}: certificate verification failed for {}: {}{}", peer,
                                          t->policy.verify_name, X509_verify_cert_error_string(verify),
                                          ca_file.empty() ? "" : fmt::format(" (trusting {})", ca_file)));
        const bool queued = ERR_peek_error() != 0;
        const std::string detail =
            queued ? tls::openssl_errors() : e == SSL_ERROR_SYSCALL ? "the server closed the connection" : "no detail from OpenSSL";
        return unexpected(fmt::format("TLS handshake with {}: {}", peer, detail));
    }

    t->leaf = SSL_get0_peer_certificate(conn.ssl);
    t->chain = SSL_get_peer_cert_chain(conn.ssl);
    if (t->leaf == nullptr || t->chain == nullptr || sk_X509_num(t->chain) == 0)
        return unexpected(fmt::format("TLS handshake with {}: the server presented no certificate", peer));
    if (t->policy.verify == tls_verify::pinned) {
        // Spec 4.2, client side of sha256-raw, by the check the DERP clients make: the pin
        // must match the certificate whose key signed the handshake, and everything else in
        // the chain must be a genuine meta certificate. Dates are checked below, for every
        // certificate, with the probe's own words.
        const tls::pin_verdict verdict = tls::check_pinned_chain(conn.ssl, t->policy.options.pinned_sha256, node.host_name);
        std::string want = node.cert_name.substr(11);
        for (char& c : want) c = static_cast<char>(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c);
        switch (verdict.problem) {
            case tls::pin_problem::none:
            case tls::pin_problem::outside_validity: break;
            case tls::pin_problem::no_certificate:
                return unexpected(fmt::format("TLS handshake with {}: the server presented no certificate", peer));
            case tls::pin_problem::mismatch:
                return unexpected(fmt::format("certificate pin mismatch: {} presented {} with sha256-raw:{}, the DERP "
                                              "map's CertName wants sha256-raw:{}",
                                              peer, subject_of(verdict.peer), sha256_hex(verdict.peer), want));
            case tls::pin_problem::foreign_certificate:
                return unexpected(fmt::format("{} presented {} besides the pinned certificate; CertName {} allows only "
                                              "derper's meta certificate beside it",
                                              peer, subject_of(verdict.offending), node.cert_name));
            case tls::pin_problem::wrong_name:
                return unexpected(fmt::format("pinned certificate {} is not valid for HostName {}",
                                              subject_of(verdict.peer), node.host_name));
        }
        t->pin_note = ", sha256-raw pin matched";
    }
    return t;
}

}  // namespace

outcome probe_tls(const derp_node& node, const std::string& ca_file, const run_context& ctx) {
    auto dialled = dial_tls(node, ca_file, ctx);
    if (!dialled) return failed(dialled.error());
    const tls_connection& t = *dialled.value();
    // Certificate times are whole seconds; now is not, so that a certificate issued for 3 days a
    // moment ago has 2 whole days left, not 3.
    const double now = wall_now_secs();
    outcome result;
    const std::int64_t leaf_not_after = asn1_time_unix(X509_get0_notAfter(t.leaf));
    result.cert_expiry_secs = static_cast<std::int64_t>(std::floor(static_cast<double>(leaf_not_after) - now));
    std::vector<std::string> problems;
    for (int k = 0; k < sk_X509_num(t.chain); ++k) {
        X509* cert = sk_X509_value(t.chain, k);
        // derpprobe skips self-signed certificates (by key ids) so that derper's meta
        // certificate, which is renewed with every start, never alerts. We skip the meta
        // certificate by name and other self-signed ones except the leaf: a pinned self-signed
        // leaf running out is exactly what an operator must hear about.
        if (is_meta_certificate(cert)) continue;
        if (X509_cmp(cert, t.leaf) != 0 && key_ids_equal(cert)) continue;
        const std::int64_t not_before = asn1_time_unix(X509_get0_notBefore(cert));
        const std::int64_t not_after = asn1_time_unix(X509_get0_notAfter(cert));
        const double left_secs = static_cast<double>(not_after) - now;
        if (now < static_cast<double>(not_before))
            problems.push_back(fmt::format("certificate {} is not valid before {}", subject_of(cert), format_utc(not_before)));
        if (left_secs < 0)
            problems.push_back(fmt::format("certificate {} expired {} ago ({})", subject_of(cert),
                                           format_time_left(-left_secs), format_utc(not_after)));
        else if (left_secs < static_cast<double>(cert_expiry_warning_secs))
            problems.push_back(fmt::format("certificate {} expires in {} ({}), less than 7 days away", subject_of(cert),
                                           format_time_left(left_secs), format_utc(not_after)));
    }
    if (!problems.empty()) {
        result.ok = false;
        for (const std::string& p : problems) result.text += (result.text.empty() ? "" : "; ") + p;
        return result;
    }
    result.ok = true;
    const char* verified = t.policy.verify == tls_verify::insecure ? ", not verified (InsecureForTests)"
                           : t.policy.verify == tls_verify::chain  ? ", chain verified"
                                                                   : "";
    result.text = fmt::format("{}{}{}, {} expires in {} ({})", SSL_get_version(t.conn.ssl), verified, t.pin_note,
                              subject_of(t.leaf), format_time_left(static_cast<double>(leaf_not_after) - now),
                              format_utc(leaf_not_after));
    return result;
}

std::optional<std::string> tls_handshake_problem(const derp_node& node, const std::string& ca_file,
                                                 const run_context& ctx) {
    auto dialled = dial_tls(node, ca_file, ctx);
    if (!dialled) return dialled.error();
    return std::nullopt;
}

}  // namespace derp::probe
