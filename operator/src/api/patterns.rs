//! Regular expressions that the CRD schemas use as OpenAPI `pattern`s.
//!
//! The API server evaluates these with Go's RE2 engine, so they stay inside the syntax
//! that RE2 and Rust's `regex` crate share (no look-around, no back-references). Each is
//! anchored at both ends because OpenAPI patterns are unanchored searches otherwise.

/// A fully qualified, lower-case DNS name with at least two labels (`relay.example.com`).
///
/// Used for the EHLO name and for mail domains: RFC 5321 wants an FQDN in EHLO, and a
/// single-label mail domain cannot carry the DKIM, SPF and DMARC records we publish.
/// Each label is at most 63 characters; the overall limit of 253 is a `maxLength`.
pub const FQDN: &str =
    r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// An RFC 1123 DNS label (`eu-west-1`): names that end up inside Kubernetes object names
/// and DNS records.
pub const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// An RFC 1123 subdomain, the rule for most Kubernetes object names (Secrets, issuers).
pub const DNS_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A key inside a Secret's `data`.
pub const SECRET_KEY: &str = r"^[-._a-zA-Z0-9]+$";

/// A Kubernetes label value, the rule for `topology.kubernetes.io/zone` values.
pub const LABEL_VALUE: &str = r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$";

/// A positive duration such as `90s`, `5m`, `1h30m` or `7d`: one or more integer-unit
/// pairs, at least one of them non-zero.
///
/// Go's `time.ParseDuration` has no day unit, and mail people think in days for queue
/// lifetimes and key rotation, so `d` (24 h) is accepted and parsed by
/// [`crate::api::duration::parse`]. Fractions are not accepted: they add nothing here.
/// Zero is rejected because every duration in the API is a wait or a lifetime, where
/// zero means a busy loop or instant expiry.
pub const DURATION: &str =
    r"^([0-9]+(ms|s|m|h|d))*[0-9]*[1-9][0-9]*(ms|s|m|h|d)([0-9]+(ms|s|m|h|d))*$";

/// An IPv4 or IPv6 network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`).
///
/// The IPv4 branch is exact. The IPv6 branch accepts the hex-and-colon shapes with a
/// prefix length of 0..=128; it lets through a few malformed addresses (such as `1:::2`)
/// rather than grow into an unreadable expression, and the operator parses every entry
/// again before rendering node configuration. CEL's `isCIDR()` would be exact, but the
/// schema keeps to what every supported API server evaluates the same way.
pub const CIDR: &str = concat!(
    r"^(((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])/(3[0-2]|[12]?[0-9])",
    r"|[0-9a-fA-F]{0,4}(:[0-9a-fA-F]{0,4}){2,7}/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$"
);

/// A DMARC `rua` destination: a `mailto:` URI, with DMARC's optional size limit suffix
/// (`mailto:dmarc@example.com!10m`), or a plain address that the operator turns into
/// one.
pub const MAILTO_URI: &str = r"^(mailto:)?[^@\s,;!:]+@[A-Za-z0-9.-]+(![0-9]+[kmgt]?)?$";

/// A TLS-RPT reporting destination (RFC 8460): a `mailto:` or `https://` URI, or a plain
/// address that the operator turns into a `mailto:` URI.
pub const TLSRPT_URI: &str = r"^((mailto:)?[^@\s,;!:]+@[A-Za-z0-9.-]+|https://[^\s,;]+)$";

/// One SPF mechanism to add before the final `all` (`include:_spf.example.net`,
/// `ip4:192.0.2.0/24`, `-mx`). `all` and `redirect=` are not accepted here: the final
/// `all` has its own field and a redirect would make that field meaningless.
pub const SPF_MECHANISM: &str = concat!(
    r"^[-+~?]?(include:[^\s]+|exists:[^\s]+|a(:[^\s/]+)?(/[0-9]{1,3})?(//[0-9]{1,3})?",
    r"|mx(:[^\s/]+)?(/[0-9]{1,3})?(//[0-9]{1,3})?|ptr(:[^\s]+)?|ip4:[0-9./]+|ip6:[0-9a-fA-F:./]+)$"
);
