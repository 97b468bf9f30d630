package e2e

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/smtp"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// podGateway is the host's address on the real node's pod bridge: the pods' nameserver
// (e2e/node.sh) and where the test's DNS server and SMTP sink listen.
const podGateway = "10.244.0.1"

// dnsZone is a tiny authoritative DNS server: MX and A records for the test's domains,
// NXDOMAIN for every other name. It is what the pods' resolv.conf names.
type dnsZone struct {
	mx map[string]string // domain. -> exchange.
	a  map[string][4]byte
}

func startDNS(t *testing.T, addr string, zone dnsZone) {
	t.Helper()
	conn, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("DNS server on %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			if reply, err := zone.answer(buf[:n]); err == nil {
				_, _ = conn.WriteTo(reply, from)
			}
		}
	}()
}

func (z dnsZone) answer(query []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	name := strings.ToLower(q.Name.String())
	_, isMX := z.mx[name]
	_, isA := z.a[name]
	rcode := dnsmessage.RCodeSuccess
	if !isMX && !isA {
		rcode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true,
		RecursionDesired: h.RecursionDesired, RecursionAvailable: true, RCode: rcode})
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	hdr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}
	switch {
	case q.Type == dnsmessage.TypeMX && isMX:
		err = b.MXResource(hdr, dnsmessage.MXResource{Pref: 10, MX: dnsmessage.MustNewName(z.mx[name])})
	case q.Type == dnsmessage.TypeA && isA:
		err = b.AResource(hdr, dnsmessage.AResource{A: z.a[name]})
	}
	if err != nil {
		return nil, err
	}
	return b.Finish()
}

// smtpSink accepts every message and records the X-E2E-Seq header of each; while
// deferring, it answers every recipient with a temporary failure, so mail queues up in
// the pool's spool. It offers STARTTLS with a certificate of its own and keeps the first
// copy of every message as it arrived, with whether it came over TLS.
type smtpSink struct {
	mu        sync.Mutex
	got       map[int]int    // sequence number -> deliveries
	raw       map[int][]byte // sequence number -> the first copy, as received
	overTLS   map[int]bool   // sequence number -> the first copy came over TLS
	tls       *tls.Config
	deferring atomic.Bool
	// refusing answers every RCPT with a permanent 550 5.1.1: the mail bounces.
	refusing atomic.Bool
}

func startSink(t *testing.T, addr string) *smtpSink {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("SMTP sink on %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &smtpSink{got: map[int]int{}, raw: map[int][]byte{}, overTLS: map[int]bool{},
		tls: &tls.Config{Certificates: []tls.Certificate{selfSignedCert(t, "mx.sink.test")}}}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(conn)
		}
	}()
	return s
}

func (s *smtpSink) serve(conn net.Conn) {
	defer func() { conn.Close() }()
	r := bufio.NewReader(conn)
	say := func(line string) { _, _ = conn.Write([]byte(line + "\r\n")) }
	say("220 sink.test ESMTP e2e sink")
	secure := false
	for {
		_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		verb := strings.ToUpper(strings.Fields(line + " x")[0])
		switch verb {
		case "EHLO":
			say("250-sink.test")
			if !secure {
				say("250-STARTTLS")
			}
			say("250 8BITMIME")
		case "STARTTLS":
			say("220 2.0.0 ready to start TLS")
			tlsConn := tls.Server(conn, s.tls)
			_ = tlsConn.SetDeadline(time.Now().Add(10 * time.Second))
			if err := tlsConn.Handshake(); err != nil {
				return
			}
			conn, r, secure = tlsConn, bufio.NewReader(tlsConn), true
		case "RCPT":
			if s.refusing.Load() {
				say("550 5.1.1 the e2e sink knows no such user")
			} else if s.deferring.Load() {
				say("451 4.3.0 the e2e sink defers, try again later")
			} else {
				say("250 OK")
			}
		case "HELO", "MAIL", "RSET", "NOOP":
			say("250 OK")
		case "DATA":
			say("354 end with .")
			seq := -1
			var msg []byte
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" || l == ".\n" {
					break
				}
				msg = append(msg, strings.TrimPrefix(l, ".")...)
				if v, ok := strings.CutPrefix(l, "X-E2E-Seq: "); ok && seq < 0 {
					seq, _ = strconv.Atoi(strings.TrimSpace(v))
				}
			}
			s.mu.Lock()
			if s.got[seq] == 0 {
				s.raw[seq], s.overTLS[seq] = msg, secure
			}
			s.got[seq]++
			s.mu.Unlock()
			say("250 2.0.0 delivered")
		case "QUIT":
			say("221 bye")
			return
		default:
			say("502 5.5.2 not implemented")
		}
	}
}

// message is the first copy of a message as the sink received it, and whether it came
// over TLS.
func (s *smtpSink) message(seq int) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.raw[seq], s.overTLS[seq]
}

// selfSignedCert is a throwaway certificate for a test server's name.
func selfSignedCert(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func (s *smtpSink) delivered(seq int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got[seq]
}

func (s *smtpSink) total() (messages, copies int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.got {
		messages++
		copies += n
	}
	return messages, copies
}

// sendOne relays one message through addr; nil means the pool answered 250 to DATA.
func sendOne(addr string, seq int) error {
	_, err := send(addr, seq, nil)
	return err
}

// send relays one message through addr, first switching to TLS with STARTTLS when tlsConf
// is set (then it returns the certificate chain the pool presented).
func send(addr string, seq int, tlsConf *tls.Config) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return chain, err
	}
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	c, err := smtp.NewClient(conn, "relay.example.com")
	if err != nil {
		conn.Close()
		return chain, err
	}
	defer c.Close()
	if err := c.Hello("client.sender.test"); err != nil {
		return chain, err
	}
	if tlsConf != nil {
		if err := c.StartTLS(tlsConf); err != nil {
			return chain, err
		}
		state, _ := c.TLSConnectionState()
		chain = state.PeerCertificates
	}
	if err := c.Mail("app@sender.test"); err != nil {
		return chain, err
	}
	if err := c.Rcpt("user@sink.test"); err != nil {
		return chain, err
	}
	w, err := c.Data()
	if err != nil {
		return chain, err
	}
	fmt.Fprintf(w, "From: app@sender.test\r\nTo: user@sink.test\r\nSubject: e2e %d\r\n"+
		"Message-ID: <e2e-%d@sender.test>\r\nX-E2E-Seq: %d\r\n\r\nmessage %d\r\n", seq, seq, seq, seq)
	if err := w.Close(); err != nil {
		return chain, err
	}
	_ = c.Quit()
	return chain, nil
}

// mailWorld is what a pool on the real nodes delivers into: the test's DNS server on the
// pods' nameserver address (MX sink.test -> mx.sink.test -> 10.244.0.1) and the SMTP sink
// there, the CRDs, a namespace, and the operator for it. The operator's MailDomain checks
// ask the test's DNS server too: nothing off the machine.
func mailWorld(t *testing.T, prefix string) (*smtpSink, string) {
	t.Helper()
	startDNS(t, net.JoinHostPort(podGateway, "53"), dnsZone{
		mx: map[string]string{"sink.test.": "mx.sink.test."},
		a:  map[string][4]byte{"mx.sink.test.": {10, 244, 0, 1}},
	})
	sink := startSink(t, net.JoinHostPort(podGateway, "25"))
	Kubectl(t, "apply", "--server-side", "-f", filepath.Join(repo(t), "crds"))
	Kubectl(t, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/relaypools.smtpfleet.io", "crd/maildomains.smtpfleet.io")
	ns := Namespace(t, prefix)
	StartOperator(t, os.Getenv("KUBECONFIG"), "--namespace="+ns, "--leader-election=false",
		"--node-image="+nodeImage, "--dns-nameserver="+net.JoinHostPort(podGateway, "53"))
	return sink, ns
}

// TestRealPodsMail sends mail through a pool on the real node to a sink on the host. The
// pool delivers by MX: the pods' nameserver is the bridge address, where the test answers
// MX sink.test -> mx.sink.test -> 10.244.0.1, and the sink listens on port 25 there. Then
// the container is killed with SIGKILL while a client sends and the sink defers every
// delivery: every message the pool acknowledged with 250 must reach the sink once the
// sink accepts again.
func TestRealPodsMail(t *testing.T) {
	realNode(t)
	sink, ns := mailWorld(t, "real-mail")
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := KubectlErr("logs", "-n", ns, "mail-local-0", "--tail=60")
			t.Logf("smtp-node log:\n%s", out)
			out, _ = KubectlErr("logs", "-n", ns, "mail-local-0", "--previous", "--tail=30")
			t.Logf("smtp-node log before the restart:\n%s", out)
		}
	})
	MustApply(t, fmt.Sprintf(`apiVersion: smtpfleet.io/v1alpha1
kind: RelayPool
metadata:
  name: mail
  namespace: %[1]s
spec:
  hostname: relay.example.com
  image: %[2]s
  imagePullPolicy: Never
  dataCentres:
    - name: local
      replicas: 1
      nodeSelector: { smtpfleet.io/e2e-node: real }
      tolerations:
        - { key: %[3]s, operator: Exists, effect: NoSchedule }
  tls:
    selfSigned: {}
  relay:
    allowedNetworks: [%[4]s/32]
  queue:
    retry:
      schedule: [2s, 5s]
---
apiVersion: smtpfleet.io/v1alpha1
kind: MailDomain
metadata:
  name: sender-test
  namespace: %[1]s
spec:
  domain: sender.test
  relayPoolRef: { name: mail }
  delivery: { bounceRateThreshold: 10, minRecipients: 5 }
`, ns, nodeImage, realNodeTaint, podGateway))
	pod := "mail-local-0"
	Eventually(t, 60*time.Second, "pod "+pod, func() (bool, string) {
		return exists(ns, "pod/"+pod), "not created yet"
	})
	Kubectl(t, "wait", "-n", ns, "--for=condition=Ready", "pod/"+pod, "--timeout=240s")
	waitPoolPod(t, ns, "mail", "local")
	// The pod's address, read afresh: a configuration change replaces the pod.
	podAddr := func() string { return net.JoinHostPort(getPod(t, ns, pod).Status.PodIP, "2525") }
	addr := podAddr()

	t.Run("a message reaches the sink", func(t *testing.T) {
		// The node learns the MailDomain through its configuration: retry until it relays.
		var err error
		Eventually(t, 90*time.Second, "the pool to accept a message", func() (bool, string) {
			addr = podAddr()
			err = sendOne(addr, 0)
			return err == nil, fmt.Sprint(err)
		})
		Eventually(t, 60*time.Second, "the message at the sink", func() (bool, string) {
			return sink.delivered(0) > 0, "not delivered yet"
		})
	})

	t.Run("over STARTTLS with the pool's certificate, DKIM-signed with the domain's key", func(t *testing.T) {
		// The pool's certificate is the one in its TLS Secret, valid for its hostname.
		secretPEM, err := base64.StdEncoding.DecodeString(jsonpath(t, ns, "secret/mail-tls", `.data.tls\.crt`))
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(secretPEM)
		if block == nil {
			t.Fatal("no certificate in the Secret mail-tls")
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(secretPEM)
		chain, err := send(podAddr(), 1, &tls.Config{ServerName: "relay.example.com", RootCAs: roots, MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatalf("relaying over STARTTLS, verifying the pool's certificate for relay.example.com: %v", err)
		}
		if len(chain) == 0 || !bytes.Equal(chain[0].Raw, block.Bytes) {
			t.Errorf("the pool presented a certificate other than the one in its Secret")
		}
		Eventually(t, 60*time.Second, "the message at the sink", func() (bool, string) {
			return sink.delivered(1) > 0, "not delivered yet"
		})
		msg, overTLS := sink.message(1)
		if !overTLS {
			t.Errorf("the pool delivered without STARTTLS although the sink offered it")
		}
		// The key the MailDomain asks DNS to publish verifies the signature.
		var domain struct {
			Status struct {
				DNS struct {
					Records []struct {
						Name     string `json:"name"`
						Expected string `json:"expected"`
					} `json:"records"`
				} `json:"dns"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(Kubectl(t, "get", "maildomain/sender-test", "-n", ns, "-o", "json")), &domain); err != nil {
			t.Fatal(err)
		}
		records := map[string]string{}
		for _, r := range domain.Status.DNS.Records {
			if strings.Contains(r.Name, "._domainkey.") {
				records[strings.TrimSuffix(r.Name, ".")] = r.Expected
			}
		}
		if len(records) == 0 {
			t.Fatalf("the MailDomain's status names no DKIM record: %+v", domain.Status.DNS.Records)
		}
		verifyDKIM(t, msg, records)
		t.Logf("delivered over STARTTLS, DKIM signature verified by dkimpy with %v", records)
	})

	t.Run("the pool's queue in its status comes from the node", func(t *testing.T) {
		// Held back at the sink, three messages wait in the node's queue; the operator
		// reads them off the node's admin API (with the pool's token) into status.queue.
		sink.deferring.Store(true)
		for seq := 1001; seq <= 1003; seq++ {
			if err := sendOne(addr, seq); err != nil {
				t.Fatalf("message %d: %v", seq, err)
			}
		}
		queue := func() (depth, oldest, unreachable, replicated string) {
			return jsonpath(t, ns, "relaypool/mail", ".status.queue.depth"),
				jsonpath(t, ns, "relaypool/mail", ".status.queue.oldestReceivedAt"),
				jsonpath(t, ns, "relaypool/mail", ".status.queue.unreachable"),
				jsonpath(t, ns, "relaypool/mail", `.status.conditions[?(@.type=="QueueReplicated")].status`)
		}
		Eventually(t, 90*time.Second, "status.queue with the waiting messages", func() (bool, string) {
			depth, oldest, unreachable, replicated := queue()
			n, _ := strconv.Atoi(depth)
			return n >= 3 && oldest != "" && unreachable == "" && replicated == "True",
				fmt.Sprintf("depth %q oldest %q unreachable %q QueueReplicated %q", depth, oldest, unreachable, replicated)
		})
		t.Logf("kubectl get relaypools:\n%s", Kubectl(t, "get", "relaypools", "-n", ns))
		sink.deferring.Store(false)
		Eventually(t, 120*time.Second, "an empty queue in status once the sink takes the mail", func() (bool, string) {
			depth, oldest, _, _ := queue()
			return depth == "0" && oldest == "", fmt.Sprintf("depth %q oldest %q", depth, oldest)
		})
	})

	t.Run("a domain whose mail bounces loses DeliveryHealthy", func(t *testing.T) {
		// The sink refuses every recipient for good: the node counts the bounces under
		// sender.test with code 5.1.1, the operator samples them off the node's admin API
		// into the MailDomain's status, and the bounce rate passes the 10 % threshold.
		md := "maildomain/sender-test"
		sink.refusing.Store(true)
		defer sink.refusing.Store(false)
		for seq := 2001; seq <= 2008; seq++ {
			if err := sendOne(addr, seq); err != nil {
				t.Fatalf("message %d: %v", seq, err)
			}
		}
		healthy := func() (status, reason string) {
			return jsonpath(t, ns, md, `.status.conditions[?(@.type=="DeliveryHealthy")].status`),
				jsonpath(t, ns, md, `.status.conditions[?(@.type=="DeliveryHealthy")].reason`)
		}
		Eventually(t, 120*time.Second, "DeliveryHealthy False with BounceRateHigh", func() (bool, string) {
			status, reason := healthy()
			bounced := jsonpath(t, ns, md, ".status.delivery.lastHour.bounced")
			return status == "False" && reason == "BounceRateHigh",
				fmt.Sprintf("DeliveryHealthy %q (%s), bounced in the last hour %q", status, reason, bounced)
		})
		// The earlier deferrals (4.3.0) are refusals too; the bounces must be among them.
		if codes := jsonpath(t, ns, md, ".status.delivery.topRefusals[*].code"); !strings.Contains(codes, "5.1.1") {
			t.Errorf("top refusal codes %q, want 5.1.1 among them", codes)
		}
		if dest := jsonpath(t, ns, md, `.status.delivery.topRefusals[?(@.code=="5.1.1")].destinations[0]`); dest != "sink.test" {
			t.Errorf("destination of the 5.1.1 refusals %q, want sink.test", dest)
		}
		describe := Kubectl(t, "describe", md, "-n", ns)
		for _, want := range []string{"DeliveryHealthy", "BounceRateHigh", "5.1.1 bad destination mailbox address", "sink.test", "DeliveryUnhealthy"} {
			if !strings.Contains(describe, want) {
				t.Errorf("kubectl describe lacks %q:\n%s", want, describe)
			}
		}
		if strings.Contains(describe, "user@sink.test") {
			t.Errorf("kubectl describe shows a recipient address:\n%s", describe)
		}
		t.Logf("kubectl get maildomains:\n%s", Kubectl(t, "get", "maildomains", "-n", ns))
	})

	t.Run("kill -9 under load loses no acknowledged message", func(t *testing.T) {
		const messages = 300
		var mu sync.Mutex // guards acked while the sender runs
		acked := make([]int, 0, messages)
		failed := 0
		// Deliveries fail temporarily until after the kill: what the pool acknowledged
		// before it is in the spool only, to be delivered by the restarted container.
		sink.deferring.Store(true)
		done := make(chan struct{})
		killAt := make(chan struct{})
		// The sender gives up after two minutes: a pool that does not come back fails the
		// test below instead of holding it up.
		stopAt := time.Now().Add(2 * time.Minute)
		go func() {
			defer close(done)
			for seq := 1; seq <= messages && time.Now().Before(stopAt); seq++ {
				if err := sendOne(addr, seq); err != nil {
					failed++
					time.Sleep(200 * time.Millisecond)
				} else {
					mu.Lock()
					acked = append(acked, seq)
					mu.Unlock()
				}
				if seq == messages/3 {
					close(killAt)
				}
			}
		}()
		select {
		case <-killAt:
		case <-done:
			t.Fatalf("the sender gave up before message %d: %d acknowledged, %d refused", messages/3, len(acked), failed)
		}
		running := getPod(t, ns, pod)
		before := running.Status.ContainerStatuses[0]
		pid := containerPid(t, running.Spec.NodeName, before.ContainerID)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill -9 %d: %v", pid, err)
		}
		killed := time.Now()
		mu.Lock()
		pending := 0
		for _, seq := range acked {
			if sink.delivered(seq) == 0 {
				pending++
			}
		}
		mu.Unlock()
		t.Logf("killed the container (pid %d) with %d acknowledged messages not yet at the sink", pid, pending)
		<-done
		sink.deferring.Store(false)
		t.Logf("sent %d messages: %d acknowledged, %d refused or cut off (the container was killed after message %d)",
			messages, len(acked), failed, messages/3)
		if len(acked) < messages/2 {
			t.Errorf("only %d of %d messages acknowledged: the pool did not come back", len(acked), messages)
		}
		Eventually(t, 180*time.Second, "every acknowledged message at the sink", func() (bool, string) {
			missing := 0
			first := -1
			for _, seq := range acked {
				if sink.delivered(seq) == 0 {
					if first < 0 {
						first = seq
					}
					missing++
				}
			}
			return missing == 0, fmt.Sprintf("%d acknowledged messages missing, the first %d", missing, first)
		})
		unique, copies := sink.total()
		after := getPod(t, ns, pod).Status.ContainerStatuses[0]
		t.Logf("sink: %d messages, %d copies (duplicates are allowed, losses are not); container restarts %d; all delivered %s after the kill",
			unique, copies, after.RestartCount, time.Since(killed).Round(time.Second))
		if after.RestartCount < 1 {
			t.Errorf("the container was not restarted: %+v", after)
		}
		Kubectl(t, "wait", "-n", ns, "--for=condition=Ready", "pod/"+pod, "--timeout=120s")
		t.Logf("kubectl get pods -o wide:\n%s", Kubectl(t, "get", "pods", "-n", ns, "-o", "wide"))
	})
}
