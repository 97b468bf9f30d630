package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// cert-manager is not part of the cluster `cluster.sh up` starts: the suite covers pools
// with and without it. Tests that need it call withCertManager, which installs its CRDs
// and starts its controller (`cluster.sh certmanager up`) and takes both away when the
// test ends; tests that need it absent call withoutCertManager. So no test depends on
// the order the suite runs in.

const certManagerWait = 90 * time.Second

// certManagerScript runs `cluster.sh certmanager <action>` against the suite's cluster.
func certManagerScript(action string) (string, error) {
	return run("", "./cluster.sh", "certmanager", action)
}

func certManagerStatus(t *testing.T) string {
	t.Helper()
	out, err := certManagerScript("status")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

// withCertManager makes sure cert-manager runs for this test. It reports whether the
// suite started it (false: the cluster's own cert-manager, left as it is).
func withCertManager(t *testing.T) bool {
	t.Helper()
	if certManagerStatus(t) == "external" {
		t.Log("using the cluster's own cert-manager")
		return false
	}
	out, err := certManagerScript("up")
	if err != nil {
		if strings.Contains(out, "has no cert-manager") {
			t.Skip("the cluster in KUBECONFIG has no cert-manager")
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cert-manager log:\n%s", tail(certManagerLog(), 60))
		}
		if _, err := certManagerScript("down"); err != nil {
			t.Errorf("taking cert-manager down: %v", err)
		}
	})
	return true
}

// withoutCertManager makes sure cert-manager's API is not installed.
func withoutCertManager(t *testing.T) {
	t.Helper()
	switch certManagerStatus(t) {
	case "external":
		t.Skip("the cluster in KUBECONFIG has cert-manager installed")
	case "absent":
	default:
		// Left running or half-removed by an interrupted run.
		if _, err := certManagerScript("down"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := KubectlErr("get", "crd", "certificates.cert-manager.io"); err == nil {
		t.Fatal("certificates.cert-manager.io is still installed")
	}
}

func certManagerLog() string {
	work := os.Getenv("SMTPFLEET_E2E_WORK")
	if work == "" {
		work = ".work"
	}
	data, err := os.ReadFile(filepath.Join(work, "logs", "cert-manager.log"))
	if err != nil {
		return err.Error()
	}
	return string(data)
}

// operatorWithChart installs the chart as its own release and runs the operator out of
// cluster as the chart's ServiceAccount (so with exactly the chart's RBAC, including its
// cert-manager rules), watching only namespace ns.
func operatorWithChart(t *testing.T, release, ns string) {
	t.Helper()
	chartNamespace := release + "-system"
	t.Cleanup(func() {
		_, _ = run("", "helm", "uninstall", release, "-n", chartNamespace, "--wait", "--timeout", "60s")
		_, _ = KubectlErr("delete", "namespace", chartNamespace, "--wait=false")
	})
	Helm(t, "install", release, filepath.Join(repo(t), "charts/smtpfleet"),
		"--namespace", chartNamespace, "--create-namespace", "--wait", "--timeout", "3m")
	Kubectl(t, "wait", "--for=condition=Established", "--timeout=60s", "crd/relaypools.smtpfleet.io")
	// The release name contains the chart's, so it is also the ServiceAccount's name.
	kubeconfig := serviceAccountKubeconfig(t, chartNamespace, release)
	StartOperator(t, kubeconfig, "--lease-namespace="+chartNamespace, "--lease-name="+release, "--namespace="+ns)
}

// waitCertificateReady waits for cert-manager to mark a Certificate Ready and, when it
// does not, fails with cert-manager's own account of why.
func waitCertificateReady(t *testing.T, ns, name string) {
	t.Helper()
	if _, err := KubectlErr("wait", "-n", ns, "--for=condition=Ready", "certificate/"+name,
		fmt.Sprintf("--timeout=%s", certManagerWait)); err != nil {
		conditions, _ := KubectlErr("get", "-n", ns, "certificate/"+name, "-o", "jsonpath={.status.conditions}")
		requests, _ := KubectlErr("get", "-n", ns, "certificaterequests", "-o", "wide")
		t.Fatalf("certificate %s/%s not Ready: %v\nconditions: %s\nrequests:\n%s", ns, name, err, conditions, requests)
	}
}

// bootstrapCA has cert-manager issue a CA certificate from the given self-signed issuer
// and creates a CA Issuer named issuer in ns that signs with it. Returns the CA.
func bootstrapCA(t *testing.T, ns, issuer, selfSignedName, selfSignedKind string) *x509.Certificate {
	t.Helper()
	caSecret := issuer + "-ca"
	MustApply(t, fmt.Sprintf(`apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  isCA: true
  commonName: smtpfleet e2e %[3]s
  secretName: %[1]s
  duration: 2160h
  privateKey: {algorithm: ECDSA, size: 256}
  issuerRef: {name: %[4]s, kind: %[5]s, group: cert-manager.io}
---
apiVersion: cert-manager.io/v1
kind: Issuer
metadata: {name: %[3]s, namespace: %[2]s}
spec:
  ca: {secretName: %[1]s}
`, caSecret, ns, issuer, selfSignedName, selfSignedKind))
	waitCertificateReady(t, ns, caSecret)
	Kubectl(t, "wait", "-n", ns, "--for=condition=Ready", "issuer/"+issuer, "--timeout=60s")
	ca := readTLSSecret(t, ns, caSecret)
	if !ca.leaf.IsCA || ca.leaf.Subject.CommonName != "smtpfleet e2e "+issuer {
		t.Fatalf("the CA certificate is not a CA for %q: isCA=%v subject=%s", issuer, ca.leaf.IsCA, ca.leaf.Subject)
	}
	if err := ca.leaf.CheckSignatureFrom(ca.leaf); err != nil {
		t.Fatalf("the CA certificate from the SelfSigned issuer is not self-signed: %v", err)
	}
	return ca.leaf
}

// issuedSecret is a kubernetes.io/tls Secret cert-manager wrote, parsed.
type issuedSecret struct {
	leaf   *x509.Certificate // the first certificate of tls.crt
	ca     []byte            // ca.crt, PEM
	owners string            // Kind/name of the owners
}

func readTLSSecret(t *testing.T, ns, name string) issuedSecret {
	t.Helper()
	field := func(key string) []byte {
		raw := Kubectl(t, "get", "secret", name, "-n", ns, "-o", "jsonpath={.data."+strings.ReplaceAll(key, ".", `\.`)+"}")
		data, err := base64.StdEncoding.DecodeString(strings.TrimSpace(raw))
		if err != nil {
			t.Fatalf("secret %s/%s %s: %v", ns, name, key, err)
		}
		return data
	}
	if typ := Kubectl(t, "get", "secret", name, "-n", ns, "-o", "jsonpath={.type}"); typ != "kubernetes.io/tls" {
		t.Fatalf("secret %s/%s has type %q", ns, name, typ)
	}
	crt, key := field("tls.crt"), field("tls.key")
	if _, err := tls.X509KeyPair(crt, key); err != nil {
		t.Fatalf("secret %s/%s: tls.key does not go with tls.crt: %v", ns, name, err)
	}
	var certs []*x509.Certificate
	for rest := crt; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatalf("secret %s/%s tls.crt: %v", ns, name, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		t.Fatalf("secret %s/%s tls.crt holds no certificate", ns, name)
	}
	return issuedSecret{
		leaf:   certs[0],
		ca:     field("ca.crt"),
		owners: jsonpath(t, ns, "secret/"+name, ".metadata.ownerReferences[*].kind") + "/" + jsonpath(t, ns, "secret/"+name, ".metadata.ownerReferences[*].name"),
	}
}

// verifyServerCert checks a leaf chains to ca and is valid now as a server certificate
// for every name.
func verifyServerCert(t *testing.T, leaf *x509.Certificate, ca *x509.Certificate, names ...string) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, name := range names {
		if _, err := leaf.Verify(x509.VerifyOptions{
			DNSName:   name,
			Roots:     roots,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}); err != nil {
			t.Errorf("certificate for %v does not verify as a server certificate for %s: %v", leaf.DNSNames, name, err)
		}
	}
}

// TestCertManagerIssues shows the real cert-manager controller runs against the e2e API
// server: a SelfSigned ClusterIssuer issues a CA, a CA Issuer signs a server certificate
// with it, and cert-manager issues it again when its Secret is lost.
func TestCertManagerIssues(t *testing.T) {
	ours := withCertManager(t)
	ns := Namespace(t, "cm")
	selfSigned := "e2e-selfsigned-" + ns
	t.Cleanup(func() { _, _ = KubectlErr("delete", "clusterissuer", selfSigned, "--ignore-not-found") })
	MustApply(t, fmt.Sprintf(`apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: %s}
spec: {selfSigned: {}}
`, selfSigned))
	Kubectl(t, "wait", "--for=condition=Ready", "clusterissuer/"+selfSigned, "--timeout=60s")
	ca := bootstrapCA(t, ns, "relay-ca", selfSigned, "ClusterIssuer")

	names := []string{"mx1." + ns + ".example.test", "mx2." + ns + ".example.test"}
	MustApply(t, fmt.Sprintf(`apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: relay, namespace: %s}
spec:
  secretName: relay-tls
  commonName: %s
  dnsNames: [%s]
  usages: [server auth, digital signature, key encipherment]
  issuerRef: {name: relay-ca, kind: Issuer}
`, ns, names[0], strings.Join(names, ", ")))
	waitCertificateReady(t, ns, "relay")

	first := readTLSSecret(t, ns, "relay-tls")
	if !slices.Equal(first.leaf.DNSNames, names) {
		t.Errorf("certificate names %v, want %v", first.leaf.DNSNames, names)
	}
	verifyServerCert(t, first.leaf, ca, names...)
	if block, _ := pem.Decode(first.ca); block == nil || !slices.Equal(block.Bytes, ca.Raw) {
		t.Errorf("ca.crt of the Secret is not the issuing CA")
	}
	if got := jsonpath(t, ns, "certificate/relay", ".status.notAfter"); got != first.leaf.NotAfter.UTC().Format(time.RFC3339) {
		t.Errorf("certificate status.notAfter %q, the issued certificate ends %s", got, first.leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if ours && first.owners != "Certificate/relay" {
		// cluster.sh starts the controller with --enable-certificate-owner-ref.
		t.Errorf("the Secret is owned by %q, want Certificate/relay", first.owners)
	}

	Kubectl(t, "delete", "secret", "relay-tls", "-n", ns)
	Eventually(t, certManagerWait, "cert-manager to issue the lost Secret again", func() (bool, string) {
		if !exists(ns, "secret/relay-tls") {
			return false, "no Secret yet"
		}
		if got := jsonpath(t, ns, "certificate/relay", ".status.conditions[?(@.type==\"Ready\")].status"); got != "True" {
			return false, "certificate Ready=" + got
		}
		return true, ""
	})
	again := readTLSSecret(t, ns, "relay-tls")
	if again.leaf.SerialNumber.Cmp(first.leaf.SerialNumber) == 0 {
		t.Errorf("the Secret came back with the old certificate (serial %x)", first.leaf.SerialNumber)
	}
	verifyServerCert(t, again.leaf, ca, names...)
}

// relayPoolWithCertManager is a one-node pool whose certificate comes from the given
// cert-manager issuer.
func relayPoolWithCertManager(name, ns, hostname, issuer, kind string) string {
	return fmt.Sprintf(`apiVersion: smtpfleet.io/v1alpha1
kind: RelayPool
metadata: {name: %s, namespace: %s}
spec:
  hostname: %s
  tls:
    certManager:
      issuerRef: {name: %s, kind: %s}
`, name, ns, hostname, issuer, kind)
}

// TestRelayPoolCertManager is the journey of a pool whose certificate cert-manager
// issues: the operator asks for it with a Certificate, cert-manager signs it with the
// team's CA, the pool reports it ready with its expiry, the nodes mount it, a
// re-issued certificate shows up in the pool's status, and deleting the pool collects
// the Certificate.
func TestRelayPoolCertManager(t *testing.T) {
	ours := withCertManager(t)
	ns := Namespace(t, "certs")
	operatorWithChart(t, "smtpfleet-certs", ns)
	selfSigned := "bootstrap"
	MustApply(t, fmt.Sprintf("apiVersion: cert-manager.io/v1\nkind: Issuer\nmetadata: {name: %s, namespace: %s}\nspec: {selfSigned: {}}\n", selfSigned, ns))
	ca := bootstrapCA(t, ns, "mail-ca", selfSigned, "Issuer")

	const pool = "mx"
	hostname := "mx." + ns + ".example.test"
	secret := pool + "-tls"
	MustApply(t, relayPoolWithCertManager(pool, ns, hostname, "mail-ca", "Issuer"))

	t.Run("the operator creates the Certificate", func(t *testing.T) {
		Eventually(t, 60*time.Second, "certificate/"+secret, func() (bool, string) {
			return exists(ns, "certificate/"+secret), "not found"
		})
		for path, want := range map[string]string{
			".metadata.ownerReferences[0].kind":       "RelayPool",
			".metadata.ownerReferences[0].name":       pool,
			".metadata.ownerReferences[0].controller": "true",
			".spec.secretName":                        secret,
			".spec.dnsNames":                          `["` + hostname + `"]`,
			".spec.issuerRef.name":                    "mail-ca",
			".spec.issuerRef.kind":                    "Issuer",
		} {
			if got := jsonpath(t, ns, "certificate/"+secret, path); got != want {
				t.Errorf("Certificate %s = %q, want %q", path, got, want)
			}
		}
	})

	var issued issuedSecret
	t.Run("cert-manager issues it and the pool reports it", func(t *testing.T) {
		waitCertificateReady(t, ns, secret)
		eventuallyField(t, 60*time.Second, ns, "relaypool/"+pool,
			`.status.conditions[?(@.type=="CertificateReady")].status`, "True")
		if reason := jsonpath(t, ns, "relaypool/"+pool, `.status.conditions[?(@.type=="CertificateReady")].reason`); reason != "CertificateIssued" {
			t.Errorf("CertificateReady reason %q, want CertificateIssued", reason)
		}
		issued = readTLSSecret(t, ns, secret)
		verifyServerCert(t, issued.leaf, ca, hostname)
		checkPoolCertificateStatus(t, ns, pool, secret, hostname, issued.leaf)
		if ours && issued.owners != "Certificate/"+secret {
			t.Errorf("the Secret is owned by %q, want Certificate/%s", issued.owners, secret)
		}
	})
	if issued.leaf == nil {
		t.FailNow()
	}

	t.Run("the nodes mount the Secret", func(t *testing.T) {
		Eventually(t, 60*time.Second, "the pool's StatefulSet to mount "+secret, func() (bool, string) {
			mounted, _ := KubectlErr("get", "statefulsets", "-n", ns, "-l", "app.kubernetes.io/instance="+pool,
				"-o", `jsonpath={.items[*].spec.template.spec.volumes[*].secret.secretName}`)
			return slices.Contains(strings.Fields(mounted), secret), "secret volumes: " + mounted
		})
	})

	t.Run("a re-issued certificate reaches the pool's status", func(t *testing.T) {
		Kubectl(t, "delete", "secret", secret, "-n", ns)
		Eventually(t, certManagerWait, "the pool to report the re-issued certificate", func() (bool, string) {
			serial := jsonpath(t, ns, "relaypool/"+pool, ".status.certificate.serial")
			ready := jsonpath(t, ns, "relaypool/"+pool, `.status.conditions[?(@.type=="CertificateReady")].status`)
			n, ok := new(big.Int).SetString(strings.ReplaceAll(serial, ":", ""), 16)
			return ready == "True" && ok && n.Cmp(issued.leaf.SerialNumber) != 0,
				fmt.Sprintf("CertificateReady=%s serial %s", ready, serial)
		})
		again := readTLSSecret(t, ns, secret)
		verifyServerCert(t, again.leaf, ca, hostname)
		checkPoolCertificateStatus(t, ns, pool, secret, hostname, again.leaf)
	})

	t.Run("deleting the pool collects the Certificate", func(t *testing.T) {
		Kubectl(t, "delete", "relaypool/"+pool, "-n", ns, "--timeout=90s")
		Eventually(t, 90*time.Second, "certificate/"+secret+" to be garbage-collected", func() (bool, string) {
			return !exists(ns, "certificate/"+secret), "still there"
		})
		if ours {
			Eventually(t, 60*time.Second, "secret/"+secret+" to be garbage-collected", func() (bool, string) {
				return !exists(ns, "secret/"+secret), "still there"
			})
		}
	})
}

// checkPoolCertificateStatus compares the pool's status.certificate with the certificate
// in the Secret.
func checkPoolCertificateStatus(t *testing.T, ns, pool, secret, hostname string, leaf *x509.Certificate) {
	t.Helper()
	object := "relaypool/" + pool
	notAfter := jsonpath(t, ns, object, ".status.certificate.notAfter")
	if at, err := time.Parse(time.RFC3339, notAfter); err != nil || !at.Equal(leaf.NotAfter) {
		t.Errorf("status.certificate.notAfter %q, the certificate ends %s", notAfter, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if got := jsonpath(t, ns, object, ".status.certificate.secretName"); got != secret {
		t.Errorf("status.certificate.secretName %q, want %q", got, secret)
	}
	if got := jsonpath(t, ns, object, ".status.certificate.dnsNames"); !strings.Contains(got, hostname) {
		t.Errorf("status.certificate.dnsNames %q lacks %s", got, hostname)
	}
	serial := jsonpath(t, ns, object, ".status.certificate.serial")
	if n, ok := new(big.Int).SetString(strings.ReplaceAll(serial, ":", ""), 16); !ok || n.Cmp(leaf.SerialNumber) != 0 {
		t.Errorf("status.certificate.serial %q, the certificate's is %X", serial, leaf.SerialNumber)
	}
}

// TestRelayPoolWithoutCertManager: a pool that asks for cert-manager in a cluster
// without it is told so plainly in its status and in a Warning event.
func TestRelayPoolWithoutCertManager(t *testing.T) {
	withoutCertManager(t)
	ns := Namespace(t, "nocm")
	operatorWithChart(t, "smtpfleet-nocm", ns)
	const pool = "mx"
	MustApply(t, relayPoolWithCertManager(pool, ns, "mx."+ns+".example.test", "letsencrypt", "ClusterIssuer"))

	condition := `.status.conditions[?(@.type=="CertificateReady")]`
	eventuallyField(t, 60*time.Second, ns, "relaypool/"+pool, condition+".reason", "CertManagerMissing")
	if status := jsonpath(t, ns, "relaypool/"+pool, condition+".status"); status != "False" {
		t.Errorf("CertificateReady is %q, want False", status)
	}
	if message := jsonpath(t, ns, "relaypool/"+pool, condition+".message"); !strings.Contains(message, "cert-manager is not installed") {
		t.Errorf("the condition does not say cert-manager is missing: %q", message)
	}
	if got := jsonpath(t, ns, "relaypool/"+pool, ".status.certificate"); got != "" {
		t.Errorf("status.certificate is set without a certificate: %s", got)
	}
	Eventually(t, 30*time.Second, "a CertManagerMissing Warning event", func() (bool, string) {
		out, _ := KubectlErr("get", "events", "-n", ns, "--field-selector",
			"involvedObject.name="+pool+",reason=CertManagerMissing,type=Warning", "-o", "name")
		return strings.TrimSpace(out) != "", "none"
	})
}
