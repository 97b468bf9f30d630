//! A real Kubernetes API server for tests: etcd and kube-apiserver from the e2e build
//! (`e2e/build.sh`, cached), started on free loopback ports in a temporary directory and
//! stopped when the test ends, also when it fails; and a proxy in front of it that a test
//! can turn into a black hole to take the API server away from one node.
#![allow(dead_code)]

use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smtp_node::config::ArbiterConfig;
use smtp_node::replication::arbiter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The namespace the tests use; it exists in every API server.
pub const NAMESPACE: &str = "default";

/// An arbiter configuration good enough to ask the API server whether it is up.
fn admin(kubeconfig: &Path) -> ArbiterConfig {
    ArbiterConfig {
        namespace: NAMESPACE.into(),
        pool: "probe".into(),
        kubeconfig: Some(kubeconfig.to_path_buf()),
        lease_duration: Duration::from_secs(10),
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// etcd and kube-apiserver, killed on drop.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
    pub port: u16,
    /// The address the API server serves on (loopback unless a test needs it reachable
    /// from other network namespaces).
    pub host: IpAddr,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl ControlPlane {
    pub fn start() -> Self {
        Self::start_on(IpAddr::from([127, 0, 0, 1]))
    }

    /// With the API server on `host` (etcd stays on loopback: only the API server uses it).
    pub fn start_on(host: IpAddr) -> Self {
        let bin = binaries();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut plane = ControlPlane {
            dir,
            children: Vec::new(),
            port: free_port(),
            host,
        };
        let work = plane.dir.path().to_path_buf();
        certificates(&work, host);
        let host = host.to_string();
        let (client, peer) = (free_port(), free_port());
        plane.spawn(
            "etcd",
            Command::new(bin.join("etcd")).args([
                "--name",
                "arbiter",
                "--data-dir",
                &work.join("etcd").display().to_string(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("arbiter=http://127.0.0.1:{peer}"),
                "--unsafe-no-fsync",
            ]),
        );
        let pki = |f: &str| work.join("pki").join(f).display().to_string();
        plane.spawn(
            "kube-apiserver",
            Command::new(bin.join("kube-apiserver")).args([
                "--etcd-servers",
                &format!("http://127.0.0.1:{client}"),
                "--bind-address",
                &host,
                "--advertise-address",
                &host,
                "--secure-port",
                &plane.port.to_string(),
                "--tls-cert-file",
                &pki("apiserver.crt"),
                "--tls-private-key-file",
                &pki("apiserver.key"),
                "--client-ca-file",
                &pki("ca.crt"),
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file",
                &pki("sa.pub"),
                "--service-account-signing-key-file",
                &pki("sa.key"),
                "--service-cluster-ip-range",
                "10.0.0.0/24",
                "--authorization-mode",
                "RBAC",
                "--endpoint-reconciler-type",
                "none",
            ]),
        );
        plane
    }

    fn spawn(&mut self, name: &str, command: &mut Command) {
        let log =
            std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log file");
        let err = log.try_clone().expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.children.push((name.to_owned(), child));
    }

    /// The last lines of every component's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.children {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(self.dir.path().join(format!("{name}.log"))) {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = f.seek(SeekFrom::Start(len.saturating_sub(3000)));
                let _ = f.read_to_string(&mut text);
            }
            out.push_str(&format!("--- {name}.log (tail)\n{text}\n"));
        }
        out
    }

    pub fn exited(&mut self) -> Option<String> {
        self.children
            .iter_mut()
            .find_map(|(name, child)| matches!(child.try_wait(), Ok(Some(_))).then(|| name.clone()))
    }

    /// A kubeconfig for the API server at `port` (the server's own port, or a proxy's),
    /// authenticating with the client certificate `user` (`admin` or `node`).
    pub fn kubeconfig(&self, file: &str, port: u16, user: &str) -> PathBuf {
        let pki = self.dir.path().join("pki");
        let path = self.dir.path().join(file);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: https://{host}:{port}\n    certificate-authority: {ca}\nusers:\n- name: admin\n  user:\n    client-certificate: {crt}\n    client-key: {key}\ncontexts:\n- name: t\n  context: {{cluster: t, user: admin, namespace: {NAMESPACE}}}\ncurrent-context: t\n",
            host = self.host,
            ca = pki.join("ca.crt").display(),
            crt = pki.join(format!("{user}.crt")).display(),
            key = pki.join(format!("{user}.key")).display(),
        );
        std::fs::write(&path, text).expect("kubeconfig");
        path
    }

    /// Starts etcd and kube-apiserver and waits until the API server serves; returns
    /// the admin kubeconfig. The free ports are picked before the components bind them,
    /// so another process may take one in between: a component that exits at start is
    /// retried on new ports, twice.
    pub async fn start_ready() -> (ControlPlane, PathBuf) {
        Self::start_ready_on(IpAddr::from([127, 0, 0, 1])).await
    }

    pub async fn start_ready_on(host: IpAddr) -> (ControlPlane, PathBuf) {
        let mut attempt = 1;
        loop {
            let mut plane = ControlPlane::start_on(host);
            let admin = plane.kubeconfig("admin.kubeconfig", plane.port, "admin");
            match plane.wait_ready(&admin).await {
                Ok(()) => return (plane, admin),
                Err(exited) if attempt < 3 => {
                    eprintln!("attempt {attempt}: {exited}");
                    attempt += 1;
                }
                Err(exited) => panic!("{exited}"),
            }
        }
    }

    pub async fn wait_ready(&mut self, kubeconfig: &Path) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(name) = self.exited() {
                return Err(format!("{name} exited\n{}", self.logs()));
            }
            if let Ok(client) = arbiter::client(&admin(kubeconfig)).await {
                let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
                if api.get_opt(NAMESPACE).await.ok().flatten().is_some() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                panic!("the API server was not ready in 120 s\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// The e2e control-plane binaries: built and cached by `e2e/build.sh`, which prints their
/// directory last.
pub fn binaries() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("running e2e/build.sh");
    assert!(out.status.success(), "e2e/build.sh failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(
        text.lines()
            .last()
            .expect("e2e/build.sh printed nothing")
            .trim(),
    );
    assert!(
        dir.join("kube-apiserver").exists(),
        "no kube-apiserver in {dir:?}"
    );
    dir
}

/// A CA, the API server's certificate for 127.0.0.1 and `host`, an admin client certificate
/// (`system:masters`), a client certificate authenticating as the pool's ServiceAccount
/// (`system:serviceaccount:default:relay`, which RBAC matches like a token of that
/// account) and the service-account key pair, as `e2e/cluster.sh` makes them.
fn certificates(work: &Path, host: IpAddr) {
    let script = r#"
set -euo pipefail
d="$1/pki"; mkdir -p "$d"; cd "$d"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=arbiter-test-ca" -keyout ca.key -out ca.crt
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr
printf 'subjectAltName=IP:127.0.0.1,IP:%s,DNS:localhost\nextendedKeyUsage=serverAuth\n' "$2" >apiserver.ext
openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile apiserver.ext -out apiserver.crt
openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=arbiter-test-admin" -keyout admin.key -out admin.csr
printf 'extendedKeyUsage=clientAuth\n' >admin.ext
openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile admin.ext -out admin.crt
openssl req -newkey rsa:2048 -nodes -subj "/CN=system:serviceaccount:default:relay" -keyout node.key -out node.csr
openssl x509 -req -in node.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile admin.ext -out node.crt
openssl genrsa -out sa.key 2048
openssl rsa -in sa.key -pubout -out sa.pub
"#;
    let out = Command::new("bash")
        .args(["-c", script, "certs"])
        .arg(work)
        .arg(host.to_string())
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "making certificates failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP proxy to the API server that the test can cut and restore: a node behind it
/// loses the API server while the process keeps running. Cut, it is a black hole:
/// connections stay open and nothing passes either way (requests hang, as behind a
/// partition), until it is restored and they are closed.
pub struct Proxy {
    pub port: u16,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let port = listener.local_addr().expect("proxy address").port();
        let (cut, _) = watch::channel(false);
        let state = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut cut = state.subscribe();
                tokio::spawn(async move {
                    let already_cut = *cut.borrow_and_update();
                    if already_cut {
                        let _ = cut.wait_for(|c| !*c).await.map(|_| ());
                        return;
                    }
                    let target = SocketAddr::from(([127, 0, 0, 1], target));
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let frozen = tokio::select! {
                        _ = async { cut.wait_for(|c| *c).await.map(|_| ()) } => true,
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                    };
                    if frozen {
                        // Hold both ends, pass nothing, until restored.
                        let _ = cut.wait_for(|c| !*c).await.map(|_| ());
                    }
                });
            }
        });
        Proxy { port, cut, task }
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.restore();
        self.task.abort();
    }
}
