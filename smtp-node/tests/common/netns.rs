//! Network namespaces for tests that cut links: a hub namespace with a bridge, where the
//! test thread itself (and so every process it starts: the API server, the sink) lives,
//! and one namespace per node, joined to the bridge by a veth pair. Taking a node's link
//! down at the hub cuts it off from everything, as a lost data-centre uplink would: its
//! packets go nowhere and its peers' connections hang until they time out. Only addresses
//! inside these namespaces are ever used; everything is deleted on drop, also when the
//! test fails.
#![allow(dead_code)]

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::process::Command;

const SUBNET: &str = "10.231.0";

pub struct Network {
    hub: String,
    nodes: Vec<NetNode>,
}

pub struct NetNode {
    /// The node's namespace (`ip netns exec <ns>` runs a process in it).
    pub ns: String,
    /// The hub's end of the node's veth pair.
    link: String,
    pub ip: IpAddr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Network {
    /// The hub (`<SUBNET>.1` on its bridge) and `count` node namespaces
    /// (`<SUBNET>.11`, `.12`, ...), each named after this process so that parallel runs
    /// never meet.
    pub fn create(count: usize) -> Self {
        let tag = format!("sfc{}", std::process::id());
        let hub = format!("{tag}-hub");
        let mut network = Network {
            hub: hub.clone(),
            nodes: Vec::new(),
        };
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &hub,
            "addr",
            "add",
            &format!("{SUBNET}.1/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for i in 0..count {
            let ns = format!("{tag}-n{i}");
            let link = format!("vh{i}");
            let address = format!("{SUBNET}.{}", 11 + i);
            ip(&["netns", "add", &ns]);
            // Registered before it is wired, so a failure below still deletes it.
            network.nodes.push(NetNode {
                ns: ns.clone(),
                link: link.clone(),
                ip: address.parse().expect("address"),
            });
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n", &hub, "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &hub, "link", "set", &link, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        network
    }

    pub fn hub_ip(&self) -> IpAddr {
        format!("{SUBNET}.1").parse().expect("address")
    }

    pub fn node(&self, i: usize) -> &NetNode {
        &self.nodes[i]
    }

    /// Moves the calling thread into the hub namespace. Threads and processes it starts
    /// afterwards are there too.
    pub fn enter_hub(&self) {
        let file =
            std::fs::File::open(format!("/var/run/netns/{}", self.hub)).expect("the hub namespace");
        // SAFETY: setns on a namespace file descriptor this function owns; it changes
        // only the calling thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns into {}: {}",
            self.hub,
            std::io::Error::last_os_error()
        );
    }

    /// Cuts node `i` off from everything.
    pub fn cut(&self, i: usize) {
        ip(&["-n", &self.hub, "link", "set", &self.nodes[i].link, "down"]);
    }

    pub fn heal(&self, i: usize) {
        ip(&["-n", &self.hub, "link", "set", &self.nodes[i].link, "up"]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self
            .nodes
            .iter()
            .map(|n| n.ns.as_str())
            .chain([self.hub.as_str()])
        {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
