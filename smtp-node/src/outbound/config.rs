//! Delivery and DKIM signing configuration.
//!
//! Durations are written the way operators write them in YAML (`"30s"`, `"5m"`, `"4h"`,
//! `"5d"`, or combinations such as `"1h30m"`). Every field has a default so that an empty
//! `delivery: {}` gives a working MX-delivering relay; the defaults are documented on the
//! fields and follow RFC 5321's recommended timeouts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How mail leaves the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryConfig {
    /// DNS servers (`ip:port`) for MX, address and DKIM lookups. Empty: the system
    /// resolver (`/etc/resolv.conf`).
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
    /// Send every message to this relay instead of looking up MX records.
    #[serde(default)]
    pub smarthost: Option<SmarthostConfig>,
    /// Simultaneous connections to one destination (a recipient domain, or the
    /// smarthost). Default 10.
    #[serde(default = "default_concurrency_per_destination")]
    pub concurrency_per_destination: usize,
    /// Simultaneous outbound connections over all destinations. Default 100.
    #[serde(default = "default_max_connections_total")]
    pub max_connections_total: usize,
    /// Messages per minute to one destination; unlimited when absent.
    #[serde(default)]
    pub rate_per_minute: Option<u32>,
    /// Waits between attempts after temporary failures: the first failure waits the first
    /// interval, and so on; the last interval repeats until `maxAge`.
    /// Default `["5m", "10m", "30m", "1h", "2h", "4h"]`.
    #[serde(default = "default_retry_schedule", with = "duration_list")]
    pub retry_schedule: Vec<Duration>,
    /// How long a message may stay queued; recipients still pending after it are bounced
    /// with status 4.4.7. Default `5d`.
    #[serde(default = "default_max_age", with = "duration_str")]
    pub max_age: Duration,
    /// TCP connect timeout per address. Default `30s`.
    #[serde(default = "default_connect_timeout", with = "duration_str")]
    pub connect_timeout: Duration,
    /// Wait for each reply (greeting, EHLO, MAIL, RCPT, DATA, RSET) and each write.
    /// Default `5m` (RFC 5321 section 4.5.3.2).
    #[serde(default = "default_command_timeout", with = "duration_str")]
    pub command_timeout: Duration,
    /// Wait for the reply after the message body has been sent. Default `10m`
    /// (RFC 5321 section 4.5.3.2.6).
    #[serde(default = "default_data_timeout", with = "duration_str")]
    pub data_timeout: Duration,
    /// Name sent in EHLO/HELO. Default: the node's host name.
    #[serde(default)]
    pub helo_name: Option<String>,
    /// Refuse to deliver over an unencrypted or unverified connection: STARTTLS must be
    /// offered and the certificate must be valid for the MX host name. When false,
    /// STARTTLS is used whenever offered and any certificate is accepted (opportunistic
    /// TLS, RFC 7435: unauthenticated encryption beats plaintext).
    #[serde(default)]
    pub require_tls: bool,
    /// Extra trust anchors (PEM) for verified TLS, added to the system roots. Useful for
    /// smarthosts with a private CA.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// TCP port of MX hosts. Default 25; tests point it at a high port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// `From:` address of delivery status notifications. Default
    /// `MAILER-DAEMON@<heloName>`. Bounces are always sent with the null reverse path.
    #[serde(default)]
    pub bounce_from: Option<String>,
    /// Messages sent over one connection before it is closed and a new one opened.
    /// Default 100.
    #[serde(default = "default_messages_per_connection")]
    pub messages_per_connection: usize,
    /// How long a stopping node lets in-flight transactions finish before it cuts them
    /// off. Cut-off recipients stay pending in the spool. Default `30s`.
    #[serde(default = "default_shutdown_grace", with = "duration_str")]
    pub shutdown_grace: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            smarthost: None,
            concurrency_per_destination: default_concurrency_per_destination(),
            max_connections_total: default_max_connections_total(),
            rate_per_minute: None,
            retry_schedule: default_retry_schedule(),
            max_age: default_max_age(),
            connect_timeout: default_connect_timeout(),
            command_timeout: default_command_timeout(),
            data_timeout: default_data_timeout(),
            helo_name: None,
            require_tls: false,
            tls_ca_file: None,
            port: default_port(),
            bounce_from: None,
            messages_per_connection: default_messages_per_connection(),
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

/// A relay that takes all outbound mail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SmarthostConfig {
    /// Host name or IP address. A name is resolved to addresses directly (no MX lookup).
    pub host: String,
    /// Default 25, or 465 with `tls: implicit`.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmarthostTls,
    /// AUTH PLAIN user; needs `passwordFile`. AUTH is only ever sent over TLS.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (trailing newline ignored), so it can come from a
    /// mounted Secret.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

impl SmarthostConfig {
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmarthostTls::Implicit => 465,
            SmarthostTls::None | SmarthostTls::Starttls => 25,
        })
    }
}

/// TLS towards the smarthost. With `starttls` and `implicit` the certificate is verified
/// against `host` (system roots plus `tlsCaFile`); a relay we hand credentials to must be
/// the one we meant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmarthostTls {
    /// Plaintext. Refused together with credentials.
    None,
    #[default]
    Starttls,
    Implicit,
}

/// One DKIM signing key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DkimConfig {
    /// Signing domain (`d=`); mail whose `From:` domain is this domain or a subdomain of
    /// it is signed with this key.
    pub domain: String,
    /// Selector (`s=`): the key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// PEM private key: PKCS#8 (`PRIVATE KEY`) for both algorithms, or PKCS#1
    /// (`RSA PRIVATE KEY`) for RSA. Re-read when the file changes, so a rotated key
    /// applies to mail already queued.
    pub private_key_file: PathBuf,
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
    /// Header fields to sign (`h=`). Default: the fields RFC 6376 section 5.4.1
    /// recommends that commonly occur in relayed mail.
    #[serde(default = "default_dkim_headers")]
    pub headers: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DkimAlgorithm {
    /// rsa-sha256
    #[default]
    Rsa,
    /// ed25519-sha256 (RFC 8463)
    Ed25519,
}

/// A configuration that cannot work, with every problem found, each naming its field.
#[derive(Debug, thiserror::Error)]
#[error("invalid delivery configuration: {}", .0.join("; "))]
pub struct InvalidConfig(pub Vec<String>);

impl DeliveryConfig {
    /// Checks what serde cannot: ranges, dependencies between fields, address syntax.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut problems = Vec::new();
        if self.concurrency_per_destination == 0 {
            problems.push("concurrencyPerDestination must be at least 1".to_string());
        }
        if self.max_connections_total == 0 {
            problems.push("maxConnectionsTotal must be at least 1".to_string());
        }
        if self.rate_per_minute == Some(0) {
            problems.push("ratePerMinute must be at least 1 (omit it for no limit)".to_string());
        }
        if self.retry_schedule.is_empty() {
            problems.push("retrySchedule must list at least one interval".to_string());
        }
        if self.retry_schedule.iter().any(Duration::is_zero) {
            problems.push("retrySchedule intervals must be longer than zero".to_string());
        }
        for (field, value) in [
            ("maxAge", self.max_age),
            ("connectTimeout", self.connect_timeout),
            ("commandTimeout", self.command_timeout),
            ("dataTimeout", self.data_timeout),
        ] {
            if value.is_zero() {
                problems.push(format!("{field} must be longer than zero"));
            }
        }
        if self.port == 0 {
            problems.push("port must be between 1 and 65535".to_string());
        }
        if self.messages_per_connection == 0 {
            problems.push("messagesPerConnection must be at least 1".to_string());
        }
        if let Some(helo) = &self.helo_name
            && !is_plausible_domain(helo)
        {
            problems.push(format!("heloName {helo:?} is not a domain name"));
        }
        if let Some(from) = &self.bounce_from
            && !is_plausible_address(from)
        {
            problems.push(format!("bounceFrom {from:?} is not a mail address"));
        }
        if let Some(smarthost) = &self.smarthost {
            if smarthost.host.trim().is_empty() {
                problems.push("smarthost.host must not be empty".to_string());
            }
            if smarthost.port == Some(0) {
                problems.push("smarthost.port must be between 1 and 65535".to_string());
            }
            match (&smarthost.username, &smarthost.password_file) {
                (Some(_), None) => {
                    problems.push("smarthost.username needs smarthost.passwordFile".to_string())
                }
                (None, Some(_)) => {
                    problems.push("smarthost.passwordFile needs smarthost.username".to_string())
                }
                _ => {}
            }
            if smarthost.username.is_some() && smarthost.tls == SmarthostTls::None {
                problems.push(
                    "smarthost.tls must be starttls or implicit when credentials are set"
                        .to_string(),
                );
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(InvalidConfig(problems))
        }
    }

    /// The EHLO name: configured, else the host name, else `localhost`.
    pub fn effective_helo_name(&self) -> String {
        self.helo_name.clone().unwrap_or_else(|| {
            let host = gethostname::gethostname().to_string_lossy().into_owned();
            if is_plausible_domain(&host) {
                host
            } else {
                "localhost".to_string()
            }
        })
    }

    pub fn effective_bounce_from(&self) -> String {
        self.bounce_from
            .clone()
            .unwrap_or_else(|| format!("MAILER-DAEMON@{}", self.effective_helo_name()))
    }
}

/// Validates a list of signing keys (the key files themselves are read by
/// [`crate::dkim::DkimKeyring::load`]).
pub fn validate_dkim(configs: &[DkimConfig]) -> Result<(), InvalidConfig> {
    let mut problems = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        if !is_plausible_domain(&config.domain) {
            problems.push(format!(
                "dkim[{i}].domain {:?} is not a domain",
                config.domain
            ));
        }
        if config.selector.is_empty()
            || !config
                .selector
                .split('.')
                .all(|label| !label.is_empty() && label.bytes().all(is_label_byte))
        {
            problems.push(format!(
                "dkim[{i}].selector {:?} is not a DNS label",
                config.selector
            ));
        }
        if config.headers.is_empty() {
            problems.push(format!("dkim[{i}].headers must list at least one field"));
        } else if !config
            .headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("from"))
        {
            // RFC 6376 section 5.4: the From header field MUST be signed.
            problems.push(format!("dkim[{i}].headers must include From"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(InvalidConfig(problems))
    }
}

fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn is_plausible_domain(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63 && label.bytes().all(is_label_byte))
}

fn is_plausible_address(address: &str) -> bool {
    match address.rsplit_once('@') {
        Some((local, domain)) => !local.is_empty() && is_plausible_domain(domain),
        None => false,
    }
}

fn default_concurrency_per_destination() -> usize {
    10
}
fn default_max_connections_total() -> usize {
    100
}
fn default_retry_schedule() -> Vec<Duration> {
    [5 * 60, 10 * 60, 30 * 60, 3600, 2 * 3600, 4 * 3600]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}
fn default_max_age() -> Duration {
    Duration::from_secs(5 * 86400)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_data_timeout() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_port() -> u16 {
    25
}
fn default_messages_per_connection() -> usize {
    100
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
/// The header fields signed when a key does not list its own.
pub fn default_dkim_headers() -> Vec<String> {
    [
        "From",
        "Reply-To",
        "Subject",
        "Date",
        "To",
        "Cc",
        "Message-ID",
        "In-Reply-To",
        "References",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    ]
    .into_iter()
    .map(str::to_string)
    .collect()
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (examples: \"30s\", \"5m\", \"1h30m\", \"5d\")")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"4h"`, `"5d"`, `"1w"` and sums such as `"1h30m"`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_string(),
        reason,
    };
    let mut rest = input.trim();
    if rest.is_empty() {
        return Err(err("empty"));
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| err("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let millis_per_unit: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        rest = &rest[unit_len..];
        let millis = value
            .checked_mul(millis_per_unit)
            .ok_or_else(|| err("too large"))?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(|| err("too large"))?;
    }
    Ok(total)
}

/// Writes a duration in the largest unit that represents it exactly.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    for (unit, size) in [
        ("w", 604_800_000u128),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis != 0 && millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

pub(crate) mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(value.iter().map(|d| super::format_duration(*d)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| super::parse_duration(text).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(432_000)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn formats_durations_in_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(5400)), "90m");
        assert_eq!(format_duration(Duration::from_secs(432_000)), "5d");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0ms");
    }

    #[test]
    fn empty_yaml_gives_documented_defaults() {
        let config: DeliveryConfig = serde_yaml::from_str("{}").unwrap();
        assert_eq!(config, DeliveryConfig::default());
        assert_eq!(config.concurrency_per_destination, 10);
        assert_eq!(config.port, 25);
        assert_eq!(config.max_age, Duration::from_secs(5 * 86400));
        assert_eq!(
            config.retry_schedule.last(),
            Some(&Duration::from_secs(4 * 3600))
        );
        config.validate().unwrap();
    }

    #[test]
    fn parses_a_full_camel_case_config_and_round_trips() {
        let yaml = r#"
nameservers: ["127.0.0.1:5353"]
smarthost: { host: relay.example.net, tls: implicit, username: u, passwordFile: /run/pw }
concurrencyPerDestination: 4
maxConnectionsTotal: 20
ratePerMinute: 60
retrySchedule: ["1s", "2s"]
maxAge: 1h
connectTimeout: 5s
commandTimeout: 1m
dataTimeout: 2m
heloName: relay.example.com
requireTls: true
port: 2525
bounceFrom: postmaster@example.com
"#;
        let config: DeliveryConfig = serde_yaml::from_str(yaml).unwrap();
        config.validate().unwrap();
        let smarthost = config.smarthost.as_ref().unwrap();
        assert_eq!(smarthost.effective_port(), 465);
        assert_eq!(
            config.retry_schedule,
            [Duration::from_secs(1), Duration::from_secs(2)]
        );
        let again: DeliveryConfig =
            serde_yaml::from_str(&serde_yaml::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_yaml::from_str::<DeliveryConfig>("retrySchedul: [1m]").unwrap_err();
        assert!(err.to_string().contains("retrySchedul"), "{err}");
        let err = serde_yaml::from_str::<DeliveryConfig>("maxAge: 5 days").unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }

    #[test]
    fn validate_names_each_bad_field() {
        let config = DeliveryConfig {
            concurrency_per_destination: 0,
            retry_schedule: vec![],
            rate_per_minute: Some(0),
            bounce_from: Some("nobody".into()),
            smarthost: Some(SmarthostConfig {
                host: "relay".into(),
                port: None,
                tls: SmarthostTls::None,
                username: Some("u".into()),
                password_file: None,
            }),
            ..DeliveryConfig::default()
        };
        let message = config.validate().unwrap_err().to_string();
        for field in [
            "concurrencyPerDestination",
            "retrySchedule",
            "ratePerMinute",
            "bounceFrom",
            "smarthost.passwordFile",
            "smarthost.tls",
        ] {
            assert!(message.contains(field), "{field} missing from: {message}");
        }
    }

    #[test]
    fn dkim_config_defaults_and_validation() {
        let yaml = "- { domain: example.com, selector: s1, privateKeyFile: /k.pem }\n\
                    - { domain: example.org, selector: 'bad sel', privateKeyFile: /k.pem, algorithm: ed25519, headers: [Subject] }";
        let configs: Vec<DkimConfig> = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(configs[0].algorithm, DkimAlgorithm::Rsa);
        assert!(configs[0].headers.iter().any(|h| h == "From"));
        assert_eq!(configs[1].algorithm, DkimAlgorithm::Ed25519);
        let message = validate_dkim(&configs).unwrap_err().to_string();
        assert!(message.contains("dkim[1].selector"), "{message}");
        assert!(
            message.contains("dkim[1].headers must include From"),
            "{message}"
        );
        assert!(!message.contains("dkim[0]"), "{message}");
    }
}
