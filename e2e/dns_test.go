package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// knot is a real authoritative DNS server (Debian's knotd) on a loopback port, serving
// one zone that the test rewrites.
type knot struct {
	dir    string
	port   int
	zone   string
	serial int
}

func startKnot(t *testing.T, zone string) *knot {
	t.Helper()
	if _, err := exec.LookPath("knotd"); err != nil {
		t.Fatalf("knotd not found: install the Debian package knot (scripts/install-deps.sh)")
	}
	k := &knot{dir: t.TempDir(), port: freeUDPAndTCPPort(t), zone: zone}
	for _, sub := range []string{"run", "storage", "zones"} {
		if err := os.MkdirAll(filepath.Join(k.dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	k.writeZone(t, "")
	conf := fmt.Sprintf(`server:
    rundir: "%[1]s/run"
    pidfile: "%[1]s/run/knot.pid"
    listen: 127.0.0.1@%[2]d
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "%[1]s/storage"
log:
  - target: stderr
    any: warning
control:
    listen: "%[1]s/run/knot.sock"
template:
  - id: default
    storage: "%[1]s/zones"
    file: "%%s.zone"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
zone:
  - domain: %[3]s
`, k.dir, k.port, zone)
	confPath := filepath.Join(k.dir, "knot.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(k.dir, "knotd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("knotd", "-c", confPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_, _ = k.knotc("stop")
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		_ = logFile.Close()
	})
	Eventually(t, 15*time.Second, "knotd serving "+zone, func() (bool, string) {
		out, err := k.knotc("zone-status", zone)
		return err == nil && strings.Contains(out, "serial"), out
	})
	return k
}

func (k *knot) addr() string { return fmt.Sprintf("127.0.0.1:%d", k.port) }

func (k *knot) knotc(args ...string) (string, error) {
	return run("", "knotc", append([]string{"-s", filepath.Join(k.dir, "run", "knot.sock"), "-t", "10"}, args...)...)
}

func (k *knot) writeZone(t *testing.T, body string) {
	t.Helper()
	k.serial++
	text := fmt.Sprintf("$ORIGIN %[1]s.\n$TTL 30\n@ SOA ns.%[1]s. hostmaster.%[1]s. %[2]d 3600 600 86400 30\n@ NS ns.%[1]s.\nns A 127.0.0.1\n%[3]s\n",
		k.zone, k.serial, body)
	if err := os.WriteFile(filepath.Join(k.dir, "zones", k.zone+".zone"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// setZone replaces the zone's records and waits until Knot serves them.
func (k *knot) setZone(t *testing.T, body string) {
	t.Helper()
	k.writeZone(t, body)
	if out, err := k.knotc("-b", "zone-reload", k.zone); err != nil {
		t.Fatalf("knotc zone-reload: %v\n%s", err, out)
	}
}

func freeUDPAndTCPPort(t *testing.T) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		port := freePort(t)
		if udp, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			_ = udp.Close()
			return port
		}
	}
	t.Fatal("no port free for both UDP and TCP")
	return 0
}

// zoneRecords turns a MailDomain's status.dns.records into zone-file lines publishing
// each expected value; `override` replaces the value of a record type and name.
func zoneRecords(t *testing.T, ns, name string, override map[string]string) string {
	t.Helper()
	var records []struct{ Type, Name, Expected string }
	raw := jsonpath(t, ns, "maildomain/"+name, ".status.dns.records")
	if err := json.Unmarshal([]byte(raw), &records); err != nil {
		t.Fatalf("status.dns.records %q: %v", raw, err)
	}
	var lines []string
	for _, r := range records {
		value := r.Expected
		if v, ok := override[r.Type+" "+r.Name]; ok {
			value = v
		}
		if r.Type == "TXT" {
			var chunks []string
			for len(value) > 255 {
				chunks = append(chunks, `"`+value[:255]+`"`)
				value = value[255:]
			}
			chunks = append(chunks, `"`+value+`"`)
			lines = append(lines, fmt.Sprintf("%s TXT %s", r.Name, strings.Join(chunks, " ")))
		} else {
			lines = append(lines, fmt.Sprintf("%s %s %s", r.Name, r.Type, value))
		}
	}
	return strings.Join(lines, "\n")
}

// TestDNSCheckOnRequest breaks a record of a verified domain in a real DNS server and
// asks for a check with the annotation: the status shows the Mismatch within a minute,
// although the next scheduled check of a verified domain is ten minutes away.
func TestDNSCheckOnRequest(t *testing.T) {
	root := repo(t)
	Kubectl(t, "apply", "--server-side", "-f", filepath.Join(root, "crds"))
	Kubectl(t, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/relaypools.smtpfleet.io", "crd/maildomains.smtpfleet.io")
	ns := Namespace(t, "dnscheck")
	dns := startKnot(t, "ondemand.e2e.test")
	// Default schedule: a verified domain is checked again in 10 minutes.
	StartOperator(t, os.Getenv("KUBECONFIG"), "--namespace="+ns, "--leader-election=false",
		"--dns-nameserver="+dns.addr(), "--dns-unverified-interval=10s")
	MustApply(t, fmt.Sprintf(`apiVersion: smtpfleet.io/v1alpha1
kind: RelayPool
metadata: {name: outbound, namespace: %s}
spec: {hostname: relay.e2e.test, replicas: 1, tls: {selfSigned: {}}}
---
`, ns)+mailDomain(ns, "ondemand", "ondemand.e2e.test", "dkim: {algorithm: ed25519}"))

	dnsVerified := `.status.conditions[?(@.type=="DNSVerified")].status`
	Eventually(t, 90*time.Second, "the records to publish", func() (bool, string) {
		raw := jsonpath(t, ns, "maildomain/ondemand", ".status.dns.records")
		return strings.Contains(raw, "_domainkey"), raw
	})
	dns.setZone(t, zoneRecords(t, ns, "ondemand", nil))
	request := func(value string) {
		Kubectl(t, "annotate", "-n", ns, "maildomain/ondemand", "--overwrite",
			"smtpfleet.io/reconcile-requested-at="+value)
	}
	request("published")
	eventuallyField(t, 60*time.Second, ns, "maildomain/ondemand", dnsVerified, "True")
	eventuallyField(t, 30*time.Second, ns, "maildomain/ondemand", ".status.lastHandledReconcileAt", "published")
	checkedAt := jsonpath(t, ns, "maildomain/ondemand", ".status.dns.checkedAt")
	// checkedAt has whole seconds: a second check in the same second could not move it.
	first, err := time.Parse(time.RFC3339, checkedAt)
	if err != nil {
		t.Fatalf("status.dns.checkedAt %q is not RFC 3339: %v", checkedAt, err)
	}
	time.Sleep(time.Until(first.Add(time.Second)))

	// Break SPF: without a request, nothing would look for ten minutes.
	spf := "TXT ondemand.e2e.test."
	dns.setZone(t, zoneRecords(t, ns, "ondemand", map[string]string{spf: "v=spf1 -all"}))
	requested := time.Now()
	request(requested.UTC().Format(time.RFC3339Nano))
	spfResult := `.status.dns.records[?(@.name=="ondemand.e2e.test.")]`
	Eventually(t, 60*time.Second, "Mismatch in status", func() (bool, string) {
		raw := jsonpath(t, ns, "maildomain/ondemand", spfResult)
		return strings.Contains(raw, `"result":"Mismatch"`), raw
	})
	t.Logf("Mismatch in status %s after the request", time.Since(requested).Round(time.Millisecond))
	eventuallyField(t, 30*time.Second, ns, "maildomain/ondemand", dnsVerified, "False")
	if after := jsonpath(t, ns, "maildomain/ondemand", ".status.dns.checkedAt"); after == checkedAt {
		t.Errorf("status.dns.checkedAt did not move (%s): it must be the time of the check", after)
	}
}
