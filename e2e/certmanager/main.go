// Command cert-manager-controller runs cert-manager's own control loops (Certificates,
// CertificateRequests, Issuers, ClusterIssuers, the SelfSigned and CA issuers) out of
// cluster against the e2e API server.
//
// cert-manager publishes its controller `main` as a nested module that is not on the Go
// module proxy, while every controller lives in the root module's pkg/ tree and registers
// itself with pkg/controller. This file is the thin start-up layer: it builds the
// controller context the way cert-manager does, constructs the chosen registered
// controllers, starts the shared informers and serves /readyz once their caches are
// synced. Leader election, webhooks, ACME and the certificate shims are left out: the
// suite runs one instance, and only SelfSigned and CA issuers.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"

	// The controllers register themselves in init.
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"

	// Issuer implementations the Issuer and ClusterIssuer controllers set up.
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

// defaultControllers is what a Certificate needs to go from created to Ready with a
// SelfSigned or CA issuer: the certificates-* pipeline, the approver (no policy engine
// runs here, so every request is approved, as in a default install), and the signers.
var defaultControllers = []string{
	"issuers",
	"clusterissuers",
	"certificates-trigger",
	"certificates-key-manager",
	"certificates-request-manager",
	"certificates-issuing",
	"certificates-readiness",
	"certificates-revision-manager",
	"certificaterequests-approver",
	"certificaterequests-issuer-ca",
	"certificaterequests-issuer-selfsigned",
}

type options struct {
	kubeconfig               string
	master                   string
	namespace                string
	clusterResourceNamespace string
	enableOwnerRef           bool
	controllers              string
	workers                  int
	readyzAddress            string
	qps                      float64
	burst                    int
	minBackoff               time.Duration
	maxBackoff               time.Duration
}

func main() {
	klog.InitFlags(nil)
	var o options
	flag.StringVar(&o.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the API server")
	flag.StringVar(&o.master, "master", "", "API server address, overriding the kubeconfig")
	flag.StringVar(&o.namespace, "namespace", "", "watch only this namespace (all when empty)")
	flag.StringVar(&o.clusterResourceNamespace, "cluster-resource-namespace", "cert-manager",
		"namespace of the Secrets that ClusterIssuers refer to")
	flag.BoolVar(&o.enableOwnerRef, "enable-certificate-owner-ref", true,
		"make each Certificate the owner of its Secret, so deleting it collects the Secret")
	flag.StringVar(&o.controllers, "controllers", strings.Join(defaultControllers, ","),
		"comma-separated controllers to run; known: "+strings.Join(known(), ","))
	flag.IntVar(&o.workers, "workers", 5, "workers per controller")
	flag.StringVar(&o.readyzAddress, "readyz-address", "127.0.0.1:9403",
		"address serving /readyz (200 once the informer caches are synced) and /metrics")
	flag.Float64Var(&o.qps, "kube-api-qps", 20, "client-side QPS when the API server has no priority and fairness")
	flag.IntVar(&o.burst, "kube-api-burst", 50, "client-side burst when the API server has no priority and fairness")
	flag.DurationVar(&o.minBackoff, "certificate-request-minimum-backoff-duration", time.Hour,
		"first wait before retrying a failed issuance")
	flag.DurationVar(&o.maxBackoff, "certificate-request-maximum-backoff-duration", 32*time.Hour,
		"longest wait between retries of a failed issuance")
	flag.Parse()

	logf.InitLogs()
	defer logf.FlushLogs()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, logf.Log, "controller")

	if err := run(ctx, o); err != nil {
		logf.Log.Error(err, "cert-manager controller failed")
		logf.FlushLogs()
		os.Exit(1)
	}
}

func known() []string {
	names := make([]string, 0, len(controllerpkg.Known()))
	for n := range controllerpkg.Known() {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// selectControllers resolves the --controllers list against the registered ones, so a
// typo fails at start instead of leaving a control loop silently missing.
func selectControllers(list string) ([]string, error) {
	var names []string
	for n := range strings.SplitSeq(list, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		if _, ok := controllerpkg.Known()[n]; !ok {
			return nil, fmt.Errorf("unknown controller %q (known: %s)", n, strings.Join(known(), ", "))
		}
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return nil, errors.New("no controllers selected")
	}
	return names, nil
}

func run(ctx context.Context, o options) error {
	log := logf.FromContext(ctx)
	names, err := selectControllers(o.controllers)
	if err != nil {
		return err
	}
	// Bind before any work so a port clash is reported at once.
	ln, err := net.Listen("tcp", o.readyzAddress)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", o.readyzAddress, err)
	}

	factory, err := controllerpkg.NewContextFactory(ctx, controllerpkg.ContextOptions{
		APIServerHost:      o.master,
		Kubeconfig:         o.kubeconfig,
		KubernetesAPIQPS:   float32(o.qps),
		KubernetesAPIBurst: o.burst,
		Namespace:          o.namespace,
		IssuerOptions: controllerpkg.IssuerOptions{
			ClusterResourceNamespace: o.clusterResourceNamespace,
		},
		CertificateOptions: controllerpkg.CertificateOptions{
			EnableOwnerRef:                           o.enableOwnerRef,
			CertificateRequestMinimumBackoffDuration: o.minBackoff,
			CertificateRequestMaximumBackoffDuration: o.maxBackoff,
		},
	})
	if err != nil {
		return fmt.Errorf("building the controller context: %w", err)
	}
	// Every Context the factory builds shares these informer factories.
	shared, err := factory.Build()
	if err != nil {
		return fmt.Errorf("building the controller context: %w", err)
	}

	var wg sync.WaitGroup
	errs := make(chan error, len(names))
	for _, n := range names {
		if n == "clusterissuers" && o.namespace != "" {
			log.Info("not starting clusterissuers: scoped to one namespace")
			continue
		}
		c, err := controllerpkg.Known()[n](factory)
		if err != nil {
			return fmt.Errorf("constructing controller %s: %w", n, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			log.Info("starting controller", "controller", n)
			if err := c.Run(o.workers, ctx); err != nil {
				errs <- fmt.Errorf("controller %s: %w", n, err)
			}
		}()
	}

	// Informers are started after every controller registered its handlers.
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.SharedInformerFactory.Start(ctx.Done())
	shared.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())

	var ready atomic.Bool
	mux := http.NewServeMux()
	mux.Handle("/metrics", shared.Metrics.NewServer(ln).Handler)
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "informer caches not synced", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := server.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs <- fmt.Errorf("serving %s: %w", o.readyzAddress, err)
		}
	}()

	go func() {
		if syncedAll(shared.KubeSharedInformerFactory.WaitForCacheSync(ctx.Done())) &&
			syncedAll(shared.SharedInformerFactory.WaitForCacheSync(ctx.Done())) {
			ready.Store(true)
			log.Info("informer caches synced", "controllers", names)
		}
	}()

	var failed error
	select {
	case <-ctx.Done():
		log.Info("stopping")
	case failed = <-errs:
		log.Error(failed, "stopping")
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = server.Shutdown(shutdown)
	if failed != nil {
		return failed
	}
	wg.Wait()
	return nil
}

// syncedAll tells whether every informer a factory started has synced.
func syncedAll[K comparable](m map[K]bool) bool {
	for _, ok := range m {
		if !ok {
			return false
		}
	}
	return true
}
