package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tlsSecret is a kubernetes.io/tls Secret manifest with a certificate for dnsName,
// valid from notBefore to notAfter, signed by its own key.
func tlsSecret(t *testing.T, ns, name, dnsName string, notBefore, notAfter time.Time) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	template := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: dnsName},
		DNSNames:     []string{dnsName},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	indent := func(b []byte) string {
		return "    " + strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", "\n    ")
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata:
  name: %s
  namespace: %s
type: kubernetes.io/tls
stringData:
  tls.crt: |
%s
  tls.key: |
%s
`, name, ns, indent(certPEM), indent(keyPEM))
}

func poolManifest(ns, name, hostname, tls string) string {
	return fmt.Sprintf(`apiVersion: smtpfleet.io/v1alpha1
kind: RelayPool
metadata:
  name: %s
  namespace: %s
spec:
  hostname: %s
  tls:
    %s
`, name, ns, hostname, tls)
}

// condition returns "status/reason" of a pool's CertificateReady condition.
func certificateCondition(t *testing.T, ns, name string) string {
	return jsonpath(t, ns, "relaypool/"+name,
		`.status.conditions[?(@.type=="CertificateReady")].status}/{.status.conditions[?(@.type=="CertificateReady")].reason`)
}

func eventuallyCertificate(t *testing.T, ns, name, want string) {
	t.Helper()
	Eventually(t, 90*time.Second, name+" CertificateReady "+want, func() (bool, string) {
		got := certificateCondition(t, ns, name)
		return got == want, "got " + got
	})
}

// TestCertificates walks the three certificate sources against the real API server:
// self-signed issued by the operator, user Secrets that are expired or for another
// name (and then fixed), and cert-manager requested while cert-manager is absent.
func TestCertificates(t *testing.T) {
	root := repo(t)
	Kubectl(t, "apply", "--server-side", "-f", filepath.Join(root, "crds"))
	Kubectl(t, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/relaypools.smtpfleet.io", "crd/maildomains.smtpfleet.io")
	ns := Namespace(t, "certs")
	StartOperator(t, os.Getenv("KUBECONFIG"), "--namespace="+ns, "--leader-election=false")
	now := time.Now()

	t.Run("selfSigned", func(t *testing.T) {
		MustApply(t, poolManifest(ns, "selfsigned", "relay.example.com", "selfSigned: {}"))
		eventuallyCertificate(t, ns, "selfsigned", "True/CertificateIssued")
		if got := jsonpath(t, ns, "secret/selfsigned-tls", ".type"); got != "kubernetes.io/tls" {
			t.Errorf("selfsigned-tls type %q", got)
		}
		if got := jsonpath(t, ns, "secret/selfsigned-tls", ".metadata.ownerReferences[0].name"); got != "selfsigned" {
			t.Errorf("selfsigned-tls is owned by %q", got)
		}
		notAfter := jsonpath(t, ns, "relaypool/selfsigned", ".status.certificate.notAfter")
		when, err := time.Parse(time.RFC3339, notAfter)
		if err != nil || when.Before(now.Add(80*24*time.Hour)) {
			t.Errorf("status.certificate.notAfter = %q (%v)", notAfter, err)
		}
		if got := jsonpath(t, ns, "relaypool/selfsigned", ".status.certificate.dnsNames[0]"); got != "relay.example.com" {
			t.Errorf("status.certificate.dnsNames = %q", got)
		}
	})

	t.Run("expired user secret", func(t *testing.T) {
		MustApply(t, tlsSecret(t, ns, "user-tls", "user.example.com", now.Add(-48*time.Hour), now.Add(-time.Hour)))
		MustApply(t, poolManifest(ns, "user", "user.example.com", "secretName: user-tls"))
		eventuallyCertificate(t, ns, "user", "False/Expired")
		msg := jsonpath(t, ns, "relaypool/user", `.status.conditions[?(@.type=="CertificateReady")].message`)
		if !strings.Contains(msg, "user-tls") || !strings.Contains(msg, "expired") {
			t.Errorf("message does not say what is wrong: %q", msg)
		}
		Eventually(t, 30*time.Second, "a Warning event", func() (bool, string) {
			out, _ := KubectlErr("get", "events", "-n", ns, "--field-selector", "type=Warning,reason=Expired", "-o", "name")
			return strings.TrimSpace(out) != "", "none yet"
		})
		// Nodes cannot offer working TLS with it: the pool is not Ready, and says why.
		ready := `.status.conditions[?(@.type=="Ready")]`
		eventuallyField(t, 60*time.Second, ns, "relaypool/user", ready+".reason", "CertificateNotReady")
		if msg := jsonpath(t, ns, "relaypool/user", ready+".message"); !strings.Contains(msg, "(Expired)") {
			t.Errorf("Ready message does not carry the certificate verdict: %q", msg)
		}
		// A valid replacement is picked up without touching the pool.
		MustApply(t, tlsSecret(t, ns, "user-tls", "user.example.com", now.Add(-time.Hour), now.Add(10*24*time.Hour)))
		eventuallyCertificate(t, ns, "user", "True/CertificateExpiring")
		eventuallyField(t, 60*time.Second, ns, "relaypool/user", ready+".status", "True")
		Eventually(t, 30*time.Second, "a CertificateExpiringSoon event", func() (bool, string) {
			out, _ := KubectlErr("get", "events", "-n", ns, "--field-selector", "type=Warning,reason=CertificateExpiringSoon", "-o", "name")
			return strings.TrimSpace(out) != "", "none yet"
		})
	})

	t.Run("mismatched user secret", func(t *testing.T) {
		MustApply(t, tlsSecret(t, ns, "other-tls", "other.example.com", now.Add(-time.Hour), now.Add(90*24*time.Hour)))
		MustApply(t, poolManifest(ns, "mismatch", "mail.example.com", "secretName: other-tls"))
		eventuallyCertificate(t, ns, "mismatch", "False/HostnameMismatch")
	})

	t.Run("missing user secret", func(t *testing.T) {
		MustApply(t, poolManifest(ns, "missing", "mail.example.com", "secretName: nowhere-tls"))
		eventuallyCertificate(t, ns, "missing", "False/SecretNotFound")
	})
}
