package e2e

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestDomainsReachRunningNodes adds 200 MailDomains to a pool and rotates one key while
// a real smtp-node follows the pool's domain set through the API server with the pool's
// own ServiceAccount (so with exactly the Role the operator grants nodes). The pods on
// kwok nodes run nothing, so the node runs here, standalone but for its domain source.
// The StatefulSet's pod template must not change; the running node must sign mail of a
// newly added domain, and of the rotated one with its new key, as dkimpy verifies.
func TestDomainsReachRunningNodes(t *testing.T) {
	root := repo(t)
	nodeBin := nodeBinary(t)
	Kubectl(t, "apply", "--server-side", "-f", filepath.Join(root, "crds"))
	Kubectl(t, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/relaypools.smtpfleet.io", "crd/maildomains.smtpfleet.io")
	ns := Namespace(t, "domains")
	// DNS is not what this test is about: a nameserver that refuses at once keeps the
	// checks from waiting, and the key status is written before the first check anyway.
	StartOperator(t, os.Getenv("KUBECONFIG"), "--namespace="+ns, "--leader-election=false",
		fmt.Sprintf("--dns-nameserver=127.0.0.1:%d", freePort(t)), "--dns-query-rate=500",
		"--dns-unverified-interval=10s")

	MustApply(t, fmt.Sprintf(`apiVersion: smtpfleet.io/v1alpha1
kind: RelayPool
metadata: {name: outbound, namespace: %s}
spec:
  hostname: relay.e2e.test
  replicas: 2
  tls: {selfSigned: {}}
`, ns))
	sts := "statefulset/outbound-default"
	Eventually(t, 60*time.Second, sts, func() (bool, string) { return exists(ns, sts), "not found" })
	Eventually(t, 60*time.Second, "the domain index", func() (bool, string) {
		return exists(ns, "configmap/outbound-domains"), "not found"
	})
	generation := jsonpath(t, ns, sts, ".metadata.generation")
	template := jsonpath(t, ns, sts, ".spec.template")

	// One domain brings its own key, to be rotated later.
	userKey := ed25519PEM(t)
	MustApply(t, userKeySecret(ns, "rotating-key", userKey)+"---\n"+mailDomain(ns, "rotating", "rotating.e2e.test",
		"dkim: {selector: r1, privateKeySecretRef: {name: rotating-key, key: private.key}}"))
	waitDomainKey(t, ns, "rotating")

	node := startNode(t, nodeBin, ns, "outbound")
	node.waitServed(t, 60*time.Second, 1)

	var docs []string
	for i := 0; i < 200; i++ {
		docs = append(docs, mailDomain(ns, fmt.Sprintf("d%03d", i), fmt.Sprintf("d%03d.e2e.test", i), "dkim: {algorithm: ed25519}"))
	}
	applied := time.Now()
	MustApply(t, strings.Join(docs, "---\n"))
	node.waitServed(t, 120*time.Second, 201)
	t.Logf("200 domains served by the running node %s after apply", time.Since(applied).Round(time.Second))

	// A domain added after the node started signs, verified with its published key.
	waitDomainKey(t, ns, "d137")
	msg := node.send(t, "alice@d137.e2e.test")
	verifyDKIM(t, msg, map[string]string{
		jsonpath(t, ns, "maildomain/d137", ".status.dkim.selector") + "._domainkey.d137.e2e.test": "v=DKIM1; k=ed25519; p=" + jsonpath(t, ns, "maildomain/d137", ".status.dkim.publicKey"),
	})

	// Rotation: a new key in the user's Secret, picked up on request.
	oldPublic := jsonpath(t, ns, "maildomain/rotating", ".status.dkim.publicKey")
	MustApply(t, userKeySecret(ns, "rotating-key", ed25519PEM(t)))
	Kubectl(t, "annotate", "-n", ns, "maildomain/rotating", "--overwrite",
		"smtpfleet.io/reconcile-requested-at="+time.Now().UTC().Format(time.RFC3339Nano))
	var newPublic string
	Eventually(t, 60*time.Second, "the rotated key in status", func() (bool, string) {
		newPublic = jsonpath(t, ns, "maildomain/rotating", ".status.dkim.publicKey")
		return newPublic != "" && newPublic != oldPublic, "still " + newPublic
	})
	rotatedAt := time.Now()
	record := map[string]string{"r1._domainkey.rotating.e2e.test": "v=DKIM1; k=ed25519; p=" + newPublic}
	Eventually(t, 60*time.Second, "mail signed with the rotated key", func() (bool, string) {
		ok, out := dkimpy(t, node.send(t, "bob@rotating.e2e.test"), record)
		return ok, out
	})
	t.Logf("rotated key signing %s after the status named it", time.Since(rotatedAt).Round(time.Second))

	if got := jsonpath(t, ns, sts, ".metadata.generation"); got != generation {
		t.Errorf("the StatefulSet went from generation %s to %s: domains rolled the pods", generation, got)
	}
	if got := jsonpath(t, ns, sts, ".spec.template"); got != template {
		t.Errorf("the pod template changed:\nbefore %s\nafter  %s", template, got)
	}
	if node.restarted() {
		t.Errorf("the node exited")
	}
	for _, object := range []string{sts, "configmap/outbound-config", "configmap/outbound-domains"} {
		if size := len(Kubectl(t, "get", object, "-n", ns, "-o", "json")); size > 16*1024 {
			t.Errorf("%s is %d bytes with 201 domains", object, size)
		}
	}
}

// mailDomain is a MailDomain bound to the pool "outbound".
func mailDomain(ns, name, domain, dkim string) string {
	return fmt.Sprintf(`apiVersion: smtpfleet.io/v1alpha1
kind: MailDomain
metadata: {name: %s, namespace: %s}
spec:
  domain: %s
  relayPoolRef: {name: outbound}
  %s
`, name, ns, domain, dkim)
}

func userKeySecret(ns, name, pemText string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: %s, namespace: %s}
stringData:
  private.key: |
    %s
`, name, ns, strings.ReplaceAll(strings.TrimSpace(pemText), "\n", "\n    "))
}

func ed25519PEM(t *testing.T) string {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

func waitDomainKey(t *testing.T, ns, name string) {
	t.Helper()
	eventuallyField(t, 120*time.Second, ns, "maildomain/"+name,
		`.status.conditions[?(@.type=="DKIMKeyReady")].status`, "True")
}

// nodeBinary is the smtp-node binary built next to the operator (e2e/run.sh builds
// both), or SMTPFLEET_NODE_BIN.
func nodeBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("SMTPFLEET_NODE_BIN")
	if bin == "" {
		bin = filepath.Join(filepath.Dir(os.Getenv("SMTPFLEET_OPERATOR_BIN")), "smtp-node")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("no smtp-node binary at %s (run e2e/run.sh, or set SMTPFLEET_NODE_BIN): %v", bin, err)
	}
	return bin
}

// testNode is an smtp-node process relaying to an in-test sink.
type testNode struct {
	cmd     *exec.Cmd
	smtp    string
	http    string
	sink    *memorySink
	exited  chan struct{}
	logPath string
}

func startNode(t *testing.T, bin, ns, pool string) *testNode {
	t.Helper()
	dir := t.TempDir()
	sk := startMemorySink(t)
	n := &testNode{
		smtp:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		http:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		sink:    sk,
		exited:  make(chan struct{}),
		logPath: filepath.Join(dir, "node.log"),
	}
	_, sinkPort, _ := net.SplitHostPort(sk.addr)
	config := fmt.Sprintf(`hostname: relay.e2e.test
node: {name: e2e-node}
listeners: [{name: relay, address: "%s"}]
http: {address: "%s"}
spool: {dir: %s}
relay: {allowedNetworks: [127.0.0.0/8]}
delivery:
  smarthost: {host: 127.0.0.1, port: %s, tls: none}
  retrySchedule: [1s]
poolDomains: {namespace: %s, pool: %s, kubeconfig: %s}
`, n.smtp, n.http, filepath.Join(dir, "spool"), sinkPort, ns, pool, serviceAccountKubeconfig(t, ns, pool))
	path := filepath.Join(dir, "smtp-node.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(n.logPath)
	if err != nil {
		t.Fatal(err)
	}
	n.cmd = exec.Command(bin, "run", "--config", path)
	n.cmd.Stdout = logFile
	n.cmd.Stderr = logFile
	n.cmd.Env = append(os.Environ(), "RUST_LOG=info")
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = n.cmd.Wait(); close(n.exited) }()
	t.Cleanup(func() {
		_ = n.cmd.Process.Signal(os.Interrupt)
		select {
		case <-n.exited:
		case <-time.After(30 * time.Second):
			_ = n.cmd.Process.Kill()
			<-n.exited
		}
		_ = logFile.Close()
		if t.Failed() {
			if data, err := os.ReadFile(n.logPath); err == nil {
				t.Logf("smtp-node log:\n%s", tail(string(data), 60))
			}
		}
	})
	return n
}

func (n *testNode) restarted() bool {
	select {
	case <-n.exited:
		return true
	default:
		return false
	}
}

// metric reads one unlabelled sample from the node's /metrics.
func (n *testNode) metric(name string) string {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + n.http + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	scanner := bufio.NewScanner(resp.Body)
	for scanner.Scan() {
		if v, ok := strings.CutPrefix(scanner.Text(), name+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return "absent"
}

func (n *testNode) waitServed(t *testing.T, timeout time.Duration, domains int) {
	t.Helper()
	want := fmt.Sprint(domains)
	Eventually(t, timeout, want+" domains served by the node", func() (bool, string) {
		if n.restarted() {
			t.Fatalf("smtp-node exited")
		}
		got := n.metric("smtpnode_domains_served")
		return got == want, "smtpnode_domains_served " + got
	})
}

// send relays one message from `from` and returns it as the sink received it.
func (n *testNode) send(t *testing.T, from string) []byte {
	t.Helper()
	id := fmt.Sprintf("%d", time.Now().UnixNano())
	body := fmt.Sprintf("From: <%s>\r\nTo: <rcpt@example.net>\r\nSubject: e2e %s\r\nDate: %s\r\nMessage-ID: <%s@e2e.test>\r\n\r\nHello %s\r\n",
		from, id, time.Now().UTC().Format(time.RFC1123Z), id, id)
	if err := smtp.SendMail(n.smtp, nil, from, []string{"rcpt@example.net"}, []byte(body)); err != nil {
		t.Fatalf("sending from %s: %v", from, err)
	}
	var got []byte
	Eventually(t, 30*time.Second, "the message at the sink", func() (bool, string) {
		got = n.sink.find("Message-ID: <" + id + "@e2e.test>")
		return got != nil, fmt.Sprintf("%d messages at the sink", n.sink.count())
	})
	return got
}

// memorySink is a minimal SMTP server that keeps every message it is given.
type memorySink struct {
	addr     string
	mu       sync.Mutex
	messages [][]byte
}

func startMemorySink(t *testing.T) *memorySink {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &memorySink{addr: l.Addr().String()}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go s.serve(conn)
		}
	}()
	return s
}

func (s *memorySink) serve(conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(conn)
	reply := func(line string) { _, _ = conn.Write([]byte(line + "\r\n")) }
	reply("220 sink")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.ToUpper(strings.TrimSpace(line))
		switch {
		case strings.HasPrefix(cmd, "EHLO"):
			reply("250-sink")
			reply("250 8BITMIME")
		case strings.HasPrefix(cmd, "DATA"):
			reply("354 go on")
			var data []byte
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
				data = append(data, strings.TrimPrefix(l, ".")...)
			}
			s.mu.Lock()
			s.messages = append(s.messages, data)
			s.mu.Unlock()
			reply("250 kept")
		case strings.HasPrefix(cmd, "QUIT"):
			reply("221 bye")
			return
		default:
			reply("250 ok")
		}
	}
}

func (s *memorySink) find(needle string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.messages {
		if strings.Contains(string(m), needle) {
			return m
		}
	}
	return nil
}

func (s *memorySink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.messages)
}

// dkimpy verifies every DKIM-Signature of msg with dkimpy (Debian's python3-dkim), the
// keys looked up in records (name → TXT value) rather than DNS.
func dkimpy(t *testing.T, msg []byte, records map[string]string) (bool, string) {
	t.Helper()
	dir := t.TempDir()
	msgPath := filepath.Join(dir, "message.eml")
	recPath := filepath.Join(dir, "records.json")
	rec, _ := json.Marshal(records)
	if err := os.WriteFile(msgPath, msg, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(recPath, rec, 0o600); err != nil {
		t.Fatal(err)
	}
	script := `
import sys, json, dkim
records = json.load(open(sys.argv[2]))
def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    return records.get(name.rstrip("."), "").encode()
data = open(sys.argv[1], "rb").read()
v = dkim.DKIM(data)
sigs = [x for (k, x) in v.headers if k.lower() == b"dkim-signature"]
if not sigs:
    print("no DKIM-Signature"); sys.exit(1)
for i in range(len(sigs)):
    if not v.verify(idx=i, dnsfunc=dnsfunc):
        print("signature", i, "does not verify"); sys.exit(1)
print("verified", len(sigs))
`
	out, err := run("", "/usr/bin/python3", "-c", script, msgPath, recPath)
	return err == nil, strings.TrimSpace(out)
}

func verifyDKIM(t *testing.T, msg []byte, records map[string]string) {
	t.Helper()
	if ok, out := dkimpy(t, msg, records); !ok {
		t.Fatalf("dkimpy does not verify the message: %s\n%s", out, base64.StdEncoding.EncodeToString(msg[:min(len(msg), 400)]))
	}
}
