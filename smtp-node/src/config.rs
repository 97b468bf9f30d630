//! The node configuration: one YAML file with camelCase keys.
//!
//! The operator renders this file from a RelayPool (one document for every pod of the
//! pool: what differs between pods comes from the environment, see [`NodeIdentity`]), and
//! people write it by hand for standalone mode. Unknown keys are errors, so a typo cannot
//! silently turn a limit off. Parsing checks types; [`Config::validate`] checks relations
//! between fields and names the field in every error (`listeners[1].address: …`).

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::outbound::config::duration_str;
use crate::outbound::{DeliveryConfig, DkimConfig};

/// The whole node configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Who this node is.
    #[serde(default)]
    pub node: NodeIdentity,
    /// The name announced in the greeting, in EHLO replies and in `Received:` headers.
    pub hostname: String,
    /// SMTP listeners.
    pub listeners: Vec<ListenerConfig>,
    /// Server certificate for STARTTLS and implicit TLS. Without it the node speaks
    /// plaintext SMTP only and offers neither STARTTLS nor AUTH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// The health, readiness and metrics endpoint.
    #[serde(default)]
    pub http: HttpConfig,
    /// Where accepted mail is kept until it is delivered.
    pub spool: SpoolConfig,
    /// Copies of each message before 250, and the peers that hold them. Written by the
    /// operator for pools; a standalone node leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationConfig>,
    /// Who may relay through this node, and for which sender domains.
    #[serde(default)]
    pub relay: RelayConfig,
    /// Protocol and resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Outbound delivery.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// DKIM signing keys, one per signing domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dkim: Vec<DkimConfig>,
    /// The pool's domain set in the API server (written by the operator): served sender
    /// domains and their DKIM keys, reloaded while the node runs, in addition to
    /// `relay.domains` and `dkim[]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_domains: Option<PoolDomainsConfig>,
}

/// Where a pool's domain set lives (see [`crate::domains`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolDomainsConfig {
    /// Namespace of the pool.
    pub namespace: String,
    /// The pool's name: the index is the ConfigMap `<pool>-domains`, the shards the
    /// Secrets `<pool>-domains-00` to `-63`.
    pub pool: String,
    /// A kubeconfig file; absent, the pod's service account is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
}

/// Where a node learns its name and data centre: given directly (standalone), or read
/// from environment variables (in a pool, `POD_NAME` from the downward API, so one
/// document serves every pod).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeIdentity {
    /// Stable node name; message ownership records carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Variable holding the node name. Used when `name` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_env: Option<String>,
    /// The data centre this node runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_centre: Option<String>,
    /// Variable holding the data centre. Used when `dataCentre` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_centre_env: Option<String>,
}

/// A node's identity once the environment has been read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedIdentity {
    pub name: String,
    pub data_centre: String,
}

impl NodeIdentity {
    /// Reads the name and data centre, from the file or the environment (`env` looks a
    /// variable up). Without either, the name is the machine's host name and the data
    /// centre `default`.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ResolvedIdentity, ConfigError> {
        let pick = |direct: &Option<String>,
                    var: &Option<String>,
                    field: &str|
         -> Result<Option<String>, ConfigError> {
            if let Some(value) = direct {
                return Ok(Some(value.clone()));
            }
            match var {
                Some(var) => match env(var).filter(|v| !v.is_empty()) {
                    Some(value) => Ok(Some(value)),
                    None => Err(ConfigError::Invalid(vec![FieldError::new(
                        field,
                        format!("environment variable {var} is not set"),
                    )])),
                },
                None => Ok(None),
            }
        };
        let name = pick(&self.name, &self.name_env, "node.nameEnv")?.unwrap_or_else(|| {
            gethostname::gethostname()
                .into_string()
                .unwrap_or_else(|_| "smtp-node".to_owned())
        });
        let data_centre = pick(
            &self.data_centre,
            &self.data_centre_env,
            "node.dataCentreEnv",
        )?
        .unwrap_or_else(|| "default".to_owned());
        if !is_node_name(&name) {
            return Err(ConfigError::Invalid(vec![FieldError::new(
                "node.name",
                format!("`{name}` must be 1-253 letters, digits, '-', '.' or '_'"),
            )]));
        }
        Ok(ResolvedIdentity { name, data_centre })
    }
}

/// One SMTP listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name used in logs and metrics (`relay`, `submission`, `implicitTls`).
    pub name: String,
    /// `ip:port` to bind, such as `0.0.0.0:25` or `[::]:587`.
    pub address: SocketAddr,
    /// `starttls`: plaintext, upgraded with STARTTLS when a certificate is configured.
    /// `implicit`: TLS from the first byte (RFC 8314).
    #[serde(default)]
    pub tls: ListenerTls,
    /// Clients must authenticate before MAIL, whatever their network (submission).
    #[serde(default)]
    pub require_auth: bool,
}

/// TLS mode of a listener.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    #[default]
    Starttls,
    Implicit,
}

/// Certificate files, re-read when they change on disk.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The HTTP endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpConfig {
    /// `ip:port` serving `/healthz`, `/readyz`, `/metrics` and the admin API.
    pub address: SocketAddr,
    /// A file holding the bearer token that the admin API (`/admin/queue`,
    /// `/admin/drain`) requires; without it the admin API is off. The operator mounts
    /// the pool's admin token here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_token_file: None,
        }
    }
}

/// The local spool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spool; created when missing. It must be on a filesystem that
    /// honours fsync: on tmpfs a restart loses acknowledged mail.
    pub dir: PathBuf,
}

/// Replication of accepted messages across the pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Nodes that must hold a message durably before 250.
    pub factor: u32,
    /// Distinct data centres among those nodes.
    pub min_data_centres: u32,
    /// Address the peer listener binds.
    pub listen: String,
    /// Host (name or address) other nodes reach this one at; the port is `listen`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_host: Option<String>,
    /// Variable holding that host (`POD_IP` in a pool). Used when `advertiseHost` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_host_env: Option<String>,
    /// The API server that arbitrates liveness and ownership (Leases and the pool's view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arbiter: Option<ArbiterConfig>,
    /// Every node of the pool, this one included. Informational: nodes find each other
    /// through the view in the API server, so scaling never rewrites this file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerConfig>,
    /// Peer mTLS material from the pool's peer CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PeerTlsFiles>,
}

/// Where the pool's Leases and view live.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArbiterConfig {
    /// Namespace of the pool (the node's own).
    pub namespace: String,
    /// The pool's name: Leases are `<pool>-node-<node>`, the view `<pool>-view`.
    pub pool: String,
    /// A kubeconfig file; absent, the pod's service account is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// Lease duration. Default `10s`; renewals, fencing and the takeover margin scale
    /// with it (see `docs/replication.md`).
    #[serde(default = "default_lease_duration", with = "duration_str")]
    pub lease_duration: Duration,
}

fn default_lease_duration() -> Duration {
    crate::replication::LeaseTiming::default().duration
}

/// One node of the pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    pub address: String,
    pub data_centre: String,
}

/// Peer mTLS files: the trust bundle, and `<certDir>/<node>.crt|.key` per node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerTlsFiles {
    pub ca_file: PathBuf,
    pub cert_dir: PathBuf,
}

/// Relay permissions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelayConfig {
    /// Client networks that may relay without authenticating, as CIDRs (`10.0.0.0/8`)
    /// or single addresses.
    #[serde(default)]
    pub allowed_networks: Vec<Network>,
    /// Submission users, one `user:$argon2id$…` line each (PHC string format, as
    /// `smtp-node hash-password` prints it). Re-read when the file changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_file: Option<PathBuf>,
    /// Sender (MAIL FROM) domains this node relays for, matched without regard to case;
    /// subdomains are not included. Mail from other domains is refused whoever the client
    /// is. The null sender (bounces) is accepted from clients that may relay.
    #[serde(default)]
    pub domains: Vec<String>,
}

/// An IP network in CIDR form; a bare address means a single host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Network(pub IpNet);

impl Network {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        // An IPv4 client reaching an IPv6 socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(*v6)),
            v4 => *v4,
        };
        self.0.contains(&ip)
    }
}

impl FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Self(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| Self(IpNet::from(ip)))
            .map_err(|_| format!("`{s}` is not an IP network (10.0.0.0/8) or address"))
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Network {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Protocol and resource limits of the SMTP server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Largest message accepted, in octets as received. Advertised with SIZE; enforced
    /// at MAIL (`SIZE=`) and while data arrives (552 5.3.4). Default 25 MiB.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: u64,
    /// Recipients per message; RCPT past it gets 452 4.5.3. Default 100.
    #[serde(default = "default_max_recipients")]
    pub max_recipients: u32,
    /// Simultaneous SMTP connections over all listeners. Default 1000.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Simultaneous SMTP connections from one client address. Default 100.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: u32,
    /// Refused commands after which a session is closed with 421 4.7.0. Default 10.
    #[serde(default = "default_max_errors")]
    pub max_errors: u32,
    /// Time allowed for each command line to arrive, idle time before it included.
    /// Default `5m` (RFC 5321 section 4.5.3.2.7).
    #[serde(default = "default_command_timeout", with = "duration_str")]
    pub command_timeout: Duration,
    /// Time allowed for the whole content of one DATA or BDAT chunk. Default `10m`.
    #[serde(default = "default_data_timeout", with = "duration_str")]
    pub data_timeout: Duration,
    /// On SIGTERM, how long sessions in flight may take to finish. Default `30s`.
    #[serde(default = "default_shutdown_timeout", with = "duration_str")]
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: default_max_message_size(),
            max_recipients: default_max_recipients(),
            max_connections: default_max_connections(),
            max_connections_per_client: default_max_connections_per_client(),
            max_errors: default_max_errors(),
            command_timeout: default_command_timeout(),
            data_timeout: default_data_timeout(),
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

fn default_max_message_size() -> u64 {
    25 * 1024 * 1024
}
fn default_max_recipients() -> u32 {
    100
}
fn default_max_connections() -> u32 {
    1000
}
fn default_max_connections_per_client() -> u32 {
    100
}
fn default_max_errors() -> u32 {
    10
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_data_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

/// One problem in a config file, with the path of the field it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path as written in the file: `listeners[1].address`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// serde_yaml's message names the field and the line.
    #[error("{0}")]
    Parse(String),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<FieldError>),
}

impl Config {
    /// Parses YAML text and validates it.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: Config =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let errors = config.validate();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Checks what types alone cannot. Pure: touches no files.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| errors.push(FieldError::new(field, message));

        if !is_domain(&self.hostname) {
            err(
                "hostname",
                format!("`{}` is not a valid host name", self.hostname),
            );
        }
        if let Some(name) = &self.node.name
            && !is_node_name(name)
        {
            err(
                "node.name",
                format!("`{name}` must be 1-253 letters, digits, '-', '.' or '_'"),
            );
        }
        if self.spool.dir.as_os_str().is_empty() {
            err("spool.dir", "must not be empty".into());
        }
        if self.listeners.is_empty() {
            err("listeners", "at least one listener is required".into());
        }
        let mut seen = HashSet::new();
        for (i, listener) in self.listeners.iter().enumerate() {
            if listener.name.is_empty() {
                err(&format!("listeners[{i}].name"), "must not be empty".into());
            }
            if !seen.insert(listener.address) {
                err(
                    &format!("listeners[{i}].address"),
                    format!("{} is used by another listener", listener.address),
                );
            }
            if listener.address == self.http.address {
                err(
                    &format!("listeners[{i}].address"),
                    format!("{} is also http.address", listener.address),
                );
            }
            if listener.tls == ListenerTls::Implicit && self.tls.is_none() {
                err(
                    &format!("listeners[{i}].tls"),
                    "an implicit-TLS listener needs the top-level `tls` certificate".into(),
                );
            }
            if listener.require_auth && self.relay.users_file.is_none() {
                err(
                    &format!("listeners[{i}].requireAuth"),
                    "clients must authenticate here, so `relay.usersFile` must be set".into(),
                );
            }
        }
        let mut domains = HashSet::new();
        for (i, domain) in self.relay.domains.iter().enumerate() {
            let field = format!("relay.domains[{i}]");
            if !is_domain(domain) {
                err(&field, format!("`{domain}` is not a valid domain name"));
            } else if !domains.insert(domain.to_ascii_lowercase()) {
                err(&field, format!("`{domain}` is listed twice"));
            }
        }
        let limits = &self.limits;
        if limits.max_message_size < 1024 {
            err(
                "limits.maxMessageSize",
                "must be at least 1024 octets".into(),
            );
        }
        for (field, value) in [
            ("limits.maxRecipients", limits.max_recipients),
            ("limits.maxConnections", limits.max_connections),
            (
                "limits.maxConnectionsPerClient",
                limits.max_connections_per_client,
            ),
            ("limits.maxErrors", limits.max_errors),
        ] {
            if value == 0 {
                err(field, "must be at least 1".into());
            }
        }
        for (field, value) in [
            ("limits.commandTimeout", limits.command_timeout),
            ("limits.dataTimeout", limits.data_timeout),
        ] {
            if value.is_zero() {
                err(field, "must be longer than 0s".into());
            }
        }
        if let Err(invalid) = self.delivery.validate() {
            for problem in invalid.0 {
                err("delivery", problem);
            }
        }
        if let Err(invalid) = crate::outbound::config::validate_dkim(&self.dkim) {
            for problem in invalid.0 {
                err("dkim", problem);
            }
        }
        if let Some(pool) = &self.pool_domains {
            if pool.namespace.is_empty() {
                err("poolDomains.namespace", "must not be empty".into());
            }
            if pool.pool.is_empty() {
                err("poolDomains.pool", "must not be empty".into());
            }
        }
        if let Some(replication) = &self.replication {
            if replication.factor == 0 {
                err("replication.factor", "must be at least 1".into());
            }
            let names: HashSet<&str> = replication.peers.iter().map(|p| p.name.as_str()).collect();
            if names.len() != replication.peers.len() {
                err("replication.peers", "node names must be unique".into());
            }
        }
        errors
    }

    /// Warnings that do not stop the node but deserve a line in the log.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.relay.domains.is_empty() && self.pool_domains.is_none() {
            out.push(
                "relay.domains is empty: every MAIL FROM will be refused (550 5.7.1) until \
                 the node serves a sender domain"
                    .to_owned(),
            );
        }
        if self.relay.allowed_networks.is_empty() && self.relay.users_file.is_none() {
            out.push(
                "neither relay.allowedNetworks nor relay.usersFile is set: no client may relay"
                    .to_owned(),
            );
        }
        if self.tls.is_none() {
            out.push("no tls certificate: STARTTLS and AUTH are not offered".to_owned());
        }
        if let Some(r) = &self.replication
            && r.factor > 1
            && r.arbiter.is_none()
        {
            out.push(format!(
                "replication.factor is {} but replication.arbiter is not set: without the \
                 API server as arbiter this node keeps its single local copy",
                r.factor
            ));
        }
        out
    }
}

fn is_node_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// A DNS name (LDH labels, 1-63 octets each, 253 in all). A trailing dot is allowed.
pub fn is_domain(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "hostname: mx.example.com\n\
        listeners: [{name: relay, address: \"127.0.0.1:2525\"}]\n\
        spool: {dir: /tmp/spool}\n\
        relay: {allowedNetworks: [10.0.0.0/8, 192.0.2.7], domains: [example.com]}\n";

    #[test]
    fn minimal_file_gets_defaults() {
        let config = Config::from_yaml(MINIMAL).unwrap();
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.listeners[0].tls, ListenerTls::Starttls);
        assert!(!config.listeners[0].require_auth);
        let ten: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(config.relay.allowed_networks[0].contains(&ten));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(config.relay.allowed_networks[1].contains(&mapped));
    }

    #[test]
    fn unknown_keys_name_the_field() {
        let text = MINIMAL.replace("spool: {dir", "spool: {directory");
        let err = Config::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("spool") && err.contains("directory"), "{err}");
    }

    #[test]
    fn relations_are_checked_with_field_paths() {
        let text = format!("{MINIMAL}limits: {{maxRecipients: 0, commandTimeout: 0s}}\n").replace(
            "listeners: [{name: relay, address: \"127.0.0.1:2525\"}]",
            "listeners: [{name: relay, address: \"127.0.0.1:2525\"}, \
             {name: sub, address: \"127.0.0.1:2525\", tls: implicit, requireAuth: true}]",
        );
        let Err(ConfigError::Invalid(errors)) = Config::from_yaml(&text) else {
            panic!("expected validation errors");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "listeners[1].address",
                "listeners[1].tls",
                "listeners[1].requireAuth",
                "limits.maxRecipients",
                "limits.commandTimeout"
            ]
        );
    }

    #[test]
    fn bad_network_is_refused() {
        let text = MINIMAL.replace("10.0.0.0/8", "10.0.0.0/99");
        let err = Config::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("10.0.0.0/99"), "{err}");
    }

    #[test]
    fn identity_from_environment() {
        let node = NodeIdentity {
            name_env: Some("POD_NAME".into()),
            data_centre_env: Some("DC".into()),
            ..Default::default()
        };
        let env = |var: &str| match var {
            "POD_NAME" => Some("pool-east-0".to_owned()),
            "DC" => Some("east".to_owned()),
            _ => None,
        };
        let id = node.resolve(env).unwrap();
        assert_eq!(id.name, "pool-east-0");
        assert_eq!(id.data_centre, "east");
        let err = node.resolve(|_| None).unwrap_err().to_string();
        assert!(
            err.contains("node.nameEnv") && err.contains("POD_NAME"),
            "{err}"
        );
    }
}
