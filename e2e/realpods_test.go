package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// realNodeLabel marks the node a kubelet runs (e2e/node.sh); it carries
	// realNodeTaint so that only pods asking for it land there.
	realNodeLabel = "smtpfleet.io/e2e-node=real"
	realNodeTaint = "smtpfleet.io/real-node"
	// nodeImage is the smtp-node image e2e/images.sh builds and imports into containerd.
	nodeImage = "localhost/smtpfleet/smtp-node:e2e"
)

// ourCluster reports whether KUBECONFIG is the cluster e2e/cluster.sh started.
func ourCluster(t *testing.T) bool {
	work := os.Getenv("SMTPFLEET_E2E_WORK")
	if work == "" {
		work = filepath.Join(repo(t), "e2e", ".work")
	}
	return filepath.Clean(os.Getenv("KUBECONFIG")) == filepath.Join(work, "kubeconfig")
}

// realNode returns the name of the cluster's real node. It skips the test when the node
// could not be set up because the machine lacks a kernel feature (e2e/node.sh status says
// which), or when the cluster was started without one on purpose.
func realNode(t *testing.T) string {
	t.Helper()
	out, err := KubectlErr("get", "nodes", "-l", realNodeLabel, "-o", "jsonpath={.items[*].metadata.name}")
	if err != nil {
		t.Fatal(err)
	}
	if names := strings.Fields(out); len(names) > 0 {
		return names[0]
	}
	if !ourCluster(t) {
		t.Skipf("the cluster has no node labelled %s with the project's images imported", realNodeLabel)
	}
	if os.Getenv("SMTPFLEET_E2E_REAL_NODE") == "0" {
		t.Skip("SMTPFLEET_E2E_REAL_NODE=0: the cluster was started without a real node")
	}
	status, _ := run("", filepath.Join(repo(t), "e2e", "node.sh"), "status")
	status = strings.TrimSpace(status)
	if reason, ok := strings.CutPrefix(status, "unavailable: "); ok {
		t.Skipf("no real node on this machine: %s", reason)
	}
	t.Fatalf("the cluster has no real node (e2e/node.sh status: %q)", status)
	return ""
}

// realNodes returns the names of the cluster's real nodes, skipping the test (saying why)
// when there are fewer than n.
func realNodes(t *testing.T, n int) []string {
	t.Helper()
	realNode(t)
	names := strings.Fields(Kubectl(t, "get", "nodes", "-l", realNodeLabel, "-o", "jsonpath={.items[*].metadata.name}"))
	if len(names) < n {
		t.Skipf("%d real node(s), the test needs %d (SMTPFLEET_E2E_REAL_NODES)", len(names), n)
	}
	return names
}

// realPool is a one-node pool pinned to the real node.
func realPool(ns, name string) string {
	return fmt.Sprintf(`apiVersion: smtpfleet.io/v1alpha1
kind: RelayPool
metadata:
  name: %s
  namespace: %s
spec:
  hostname: relay.example.com
  image: %s
  imagePullPolicy: Never
  dataCentres:
    - name: local
      replicas: 1
      nodeSelector: { smtpfleet.io/e2e-node: real }
      tolerations:
        - { key: %s, operator: Exists, effect: NoSchedule }
  tls:
    selfSigned: {}
`, name, ns, nodeImage, realNodeTaint)
}

type podStatus struct {
	Spec struct {
		NodeName string `json:"nodeName"`
	} `json:"spec"`
	Status struct {
		Phase             string `json:"phase"`
		PodIP             string `json:"podIP"`
		ContainerStatuses []struct {
			Name         string `json:"name"`
			Ready        bool   `json:"ready"`
			RestartCount int    `json:"restartCount"`
			ContainerID  string `json:"containerID"`
			State        struct {
				Running *struct {
					StartedAt string `json:"startedAt"`
				} `json:"running"`
			} `json:"state"`
		} `json:"containerStatuses"`
	} `json:"status"`
}

func getPod(t *testing.T, ns, name string) podStatus {
	t.Helper()
	var pod podStatus
	if err := json.Unmarshal([]byte(Kubectl(t, "get", "pod", name, "-n", ns, "-o", "json")), &pod); err != nil {
		t.Fatal(err)
	}
	return pod
}

// waitPoolPod waits until the pool has settled on the real node: its configuration
// rendered with everything it depends on (a MailDomain or a certificate arriving changes
// the configuration, and the pod is replaced), the StatefulSet rolled out, the pool Ready
// and its one pod Ready. Only then is the pod's IP the one to talk to.
func waitPoolPod(t *testing.T, ns, pool, dc string) string {
	t.Helper()
	pod := pool + "-" + dc + "-0"
	eventuallyField(t, 240*time.Second, ns, "relaypool/"+pool, `.status.conditions[?(@.type=="Ready")].status`, "True")
	gen := jsonpath(t, ns, "relaypool/"+pool, ".metadata.generation")
	eventuallyField(t, 60*time.Second, ns, "relaypool/"+pool, ".status.observedGeneration", gen)
	Kubectl(t, "rollout", "status", "-n", ns, "statefulset/"+pool+"-"+dc, "--timeout=240s")
	Kubectl(t, "wait", "-n", ns, "--for=condition=Ready", "pod/"+pod, "--timeout=240s")
	return pod
}

// httpStatus is the status code of GET url, or the error.
func httpStatus(url string) (int, error) {
	client := http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// smtpGreeting reads the first line a server sends on addr.
func smtpGreeting(addr string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", err
	}
	_, _ = conn.Write([]byte("QUIT\r\n"))
	return strings.TrimSpace(line), nil
}

// criEndpoint is the socket of a real node's containerd (e2e/node.sh).
func criEndpoint(node string) string {
	if node == "e2e-node-1" {
		return "unix:///run/smtpfleet-e2e/containerd.sock"
	}
	return "unix:///run/smtpfleet-e2e-" + strings.TrimPrefix(node, "e2e-node-") + "/containerd.sock"
}

// containerPid is the host pid of a container's main process, from the runtime of the
// real node it runs on.
func containerPid(t *testing.T, node, containerID string) int {
	t.Helper()
	id := strings.TrimPrefix(containerID, "containerd://")
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	// stdout only: crictl warns on stderr that it has no config file.
	out, err := exec.CommandContext(ctx, "crictl", "--runtime-endpoint", criEndpoint(node), "inspect",
		"-o", "go-template", "--template", "{{.info.pid}}", id).Output()
	if err != nil {
		t.Fatalf("crictl inspect %s on %s: %v", id, node, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || pid <= 1 {
		t.Fatalf("crictl inspect %s: pid %q", id, out)
	}
	return pid
}

// TestRealPods runs a RelayPool's smtp-node on the real node: the project's image, built
// here and imported into containerd, started by the kubelet through runc with the pod's
// RuntimeDefault seccomp profile, read-only root and dropped capabilities; Ready on its
// own probes; answering HTTP and SMTP on its pod IP; restarted by the kubelet after
// kill -9 and Ready again.
func TestRealPods(t *testing.T) {
	nodes := realNodes(t, 1)
	root := repo(t)
	Kubectl(t, "apply", "--server-side", "-f", filepath.Join(root, "crds"))
	Kubectl(t, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/relaypools.smtpfleet.io", "crd/maildomains.smtpfleet.io")
	ns := Namespace(t, "real")
	StartOperator(t, os.Getenv("KUBECONFIG"), "--namespace="+ns, "--leader-election=false",
		"--node-image="+nodeImage)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := KubectlErr("describe", "pods", "-n", ns)
			t.Logf("kubectl describe pods:\n%s", tail(out, 60))
			out, _ = KubectlErr("get", "events", "-n", ns, "--sort-by=.lastTimestamp")
			t.Logf("events:\n%s", tail(out, 40))
		}
	})

	const name = "real"
	pod := name + "-local-0"
	started := time.Now()
	MustApply(t, realPool(ns, name))
	Eventually(t, 60*time.Second, "pod "+pod, func() (bool, string) {
		return exists(ns, "pod/"+pod), "not created yet"
	})
	Kubectl(t, "wait", "-n", ns, "--for=condition=Ready", "pod/"+pod, "--timeout=240s")
	waitPoolPod(t, ns, name, "local")
	t.Logf("pod Ready %s after the pool was applied", time.Since(started).Round(time.Second))
	t.Logf("kubectl get pods -o wide:\n%s", Kubectl(t, "get", "pods", "-n", ns, "-o", "wide"))

	status := getPod(t, ns, pod)
	node := status.Spec.NodeName
	if !slices.Contains(nodes, node) {
		t.Fatalf("pod runs on %q, want a real node %q", node, nodes)
	}
	if status.Status.Phase != "Running" || len(status.Status.ContainerStatuses) != 1 {
		t.Fatalf("pod phase %q, %d container statuses", status.Status.Phase, len(status.Status.ContainerStatuses))
	}
	container := status.Status.ContainerStatuses[0]
	if !container.Ready || container.State.Running == nil || !strings.HasPrefix(container.ContainerID, "containerd://") {
		t.Fatalf("container not running in containerd: %+v", container)
	}
	ip := status.Status.PodIP
	// e2e-node-N's pods are on its bridge, 10.244.(N-1).0/24 (e2e/node.sh).
	n, _ := strconv.Atoi(strings.TrimPrefix(node, "e2e-node-"))
	if bridge := fmt.Sprintf("10.244.%d.", n-1); !strings.HasPrefix(ip, bridge) {
		t.Fatalf("pod IP %q on %s is not on the node's pod bridge %s0/24", ip, node, bridge)
	}

	t.Run("answers on its pod IP", func(t *testing.T) {
		for _, path := range []string{"/healthz", "/readyz"} {
			code, err := httpStatus("http://" + net.JoinHostPort(ip, "8080") + path)
			if err != nil || code != http.StatusOK {
				t.Errorf("GET %s on the pod: %d %v", path, code, err)
			}
		}
		greeting, err := smtpGreeting(net.JoinHostPort(ip, "2525"))
		if err != nil || !strings.HasPrefix(greeting, "220 ") {
			t.Errorf("SMTP greeting on the pod's relay port: %q %v", greeting, err)
		}
	})

	t.Run("runs confined", func(t *testing.T) {
		pid := containerPid(t, node, container.ContainerID)
		procStatus, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		fields := map[string]string{}
		for _, line := range strings.Split(string(procStatus), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				fields[k] = strings.TrimSpace(v)
			}
		}
		// Seccomp 2: a filter (RuntimeDefault); no capabilities; uid 65532; no_new_privs.
		if fields["Seccomp"] != "2" {
			t.Errorf("Seccomp: %q, want 2 (filter)", fields["Seccomp"])
		}
		if fields["CapEff"] != "0000000000000000" {
			t.Errorf("CapEff: %q, want none", fields["CapEff"])
		}
		if uid := strings.Fields(fields["Uid"]); len(uid) == 0 || uid[0] != "65532" {
			t.Errorf("Uid: %q, want 65532", fields["Uid"])
		}
		if fields["NoNewPrivs"] != "1" {
			t.Errorf("NoNewPrivs: %q, want 1", fields["NoNewPrivs"])
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || filepath.Base(exe) != "smtp-node" {
			t.Errorf("container process is %q (%v), want smtp-node", exe, err)
		}
	})

	t.Run("pool Ready", func(t *testing.T) {
		eventuallyField(t, 90*time.Second, ns, "relaypool/"+name, ".status.readyReplicas", "1")
		eventuallyField(t, 60*time.Second, ns, "relaypool/"+name, `.status.conditions[?(@.type=="Ready")].status`, "True")
	})

	t.Run("kill -9 restarts the container", func(t *testing.T) {
		pid := containerPid(t, node, container.ContainerID)
		killed := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill -9 %d: %v", pid, err)
		}
		Eventually(t, 120*time.Second, "the container restarted and Ready", func() (bool, string) {
			s := getPod(t, ns, pod)
			if len(s.Status.ContainerStatuses) != 1 {
				return false, "no container status"
			}
			c := s.Status.ContainerStatuses[0]
			return c.RestartCount >= 1 && c.Ready && c.ContainerID != container.ContainerID,
				fmt.Sprintf("restarts %d, ready %v, id %s", c.RestartCount, c.Ready, c.ContainerID)
		})
		t.Logf("Ready again %s after kill -9", time.Since(killed).Round(time.Second))
		code, err := httpStatus("http://" + net.JoinHostPort(ip, "8080") + "/readyz")
		if err != nil || code != http.StatusOK {
			t.Errorf("GET /readyz after the restart: %d %v", code, err)
		}
		t.Logf("kubectl get pods -o wide:\n%s", Kubectl(t, "get", "pods", "-n", ns, "-o", "wide"))
	})
}

// TestRealPodsOperatorInCluster installs the chart with the operator image built here:
// the operator runs as pods on the real node (two replicas, one leading through the
// Lease), reaches the API server through the kubernetes Service address, and starts a
// pool's smtp-node from the --node-image the chart passes it.
func TestRealPodsOperatorInCluster(t *testing.T) {
	realNode(t)
	root := repo(t)
	const rel = "realpods"
	opNs := Namespace(t, "real-operator")
	poolNs := Namespace(t, "real-pool")
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := KubectlErr("get", "pods", "-A", "-o", "wide")
			t.Logf("kubectl get pods -A -o wide:\n%s", out)
			out, _ = KubectlErr("describe", "pods", "-n", opNs)
			t.Logf("operator pods:\n%s", tail(out, 60))
			out, _ = KubectlErr("logs", "-n", opNs, "-l", "app.kubernetes.io/instance="+rel, "--tail=40", "--prefix")
			t.Logf("operator logs:\n%s", out)
			out, _ = KubectlErr("describe", "pods", "-n", poolNs)
			t.Logf("pool pods:\n%s", tail(out, 60))
		}
		_, _ = run("", "helm", "uninstall", rel, "-n", opNs, "--wait", "--timeout", "90s")
	})
	toleration := fmt.Sprintf(`[{"key":%q,"operator":"Exists","effect":"NoSchedule"}]`, realNodeTaint)
	started := time.Now()
	Helm(t, "install", rel, filepath.Join(root, "charts/smtpfleet"), "--namespace", opNs,
		"--set", "image.repository=localhost/smtpfleet/operator", "--set", "image.tag=e2e",
		"--set", "image.pullPolicy=Never",
		"--set", "nodeImage.repository=localhost/smtpfleet/smtp-node", "--set", "nodeImage.tag=e2e",
		"--set", "leaderElection.leaseName="+rel, "--set", "logging.format=text",
		"--set-json", `watchNamespaces=["`+poolNs+`"]`,
		"--set-json", "tolerations="+toleration,
		"--set-json", `nodeSelector={"smtpfleet.io/e2e-node":"real"}`,
		"--wait", "--timeout", "4m")
	t.Logf("operator Deployment available %s after helm install", time.Since(started).Round(time.Second))
	t.Logf("kubectl get pods -o wide:\n%s", Kubectl(t, "get", "pods", "-n", opNs, "-o", "wide"))
	pods := strings.Fields(Kubectl(t, "get", "pods", "-n", opNs, "-l", "app.kubernetes.io/instance="+rel,
		"-o", "jsonpath={.items[*].metadata.name}"))
	if len(pods) != 2 {
		t.Fatalf("want 2 operator pods, got %q", pods)
	}

	leader := ""
	Eventually(t, 60*time.Second, "a leader in Lease "+rel, func() (bool, string) {
		leader = jsonpath(t, opNs, "lease/"+rel, ".spec.holderIdentity")
		for _, p := range pods {
			if leader == p {
				return true, ""
			}
		}
		return false, fmt.Sprintf("holder %q, pods %q", leader, pods)
	})
	t.Logf("leader: %s", leader)

	MustApply(t, fmt.Sprintf(`apiVersion: smtpfleet.io/v1alpha1
kind: RelayPool
metadata:
  name: inside
  namespace: %s
spec:
  hostname: relay.example.com
  dataCentres:
    - name: local
      replicas: 1
      nodeSelector: { smtpfleet.io/e2e-node: real }
      tolerations:
        - { key: %s, operator: Exists, effect: NoSchedule }
  tls:
    selfSigned: {}
`, poolNs, realNodeTaint))
	pod := "inside-local-0"
	Eventually(t, 90*time.Second, "pod "+pod, func() (bool, string) {
		return exists(poolNs, "pod/"+pod), "not created yet"
	})
	Kubectl(t, "wait", "-n", poolNs, "--for=condition=Ready", "pod/"+pod, "--timeout=240s")
	waitPoolPod(t, poolNs, "inside", "local")
	if image := jsonpath(t, poolNs, "pod/"+pod, ".spec.containers[0].image"); image != nodeImage {
		t.Errorf("the pool's pod runs %q, want the chart's nodeImage %q", image, nodeImage)
	}
	eventuallyField(t, 90*time.Second, poolNs, "relaypool/inside", `.status.conditions[?(@.type=="Ready")].status`, "True")
	t.Logf("kubectl get pods -o wide:\n%s", Kubectl(t, "get", "pods", "-n", poolNs, "-o", "wide"))

	t.Run("the standby takes over", func(t *testing.T) {
		Kubectl(t, "delete", "pod", leader, "-n", opNs, "--wait=false")
		Eventually(t, 120*time.Second, "a new leader", func() (bool, string) {
			holder := jsonpath(t, opNs, "lease/"+rel, ".spec.holderIdentity")
			return holder != "" && holder != leader, "holder " + holder
		})
		t.Logf("new leader: %s", jsonpath(t, opNs, "lease/"+rel, ".spec.holderIdentity"))
	})
}
