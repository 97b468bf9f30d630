package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"
)

// ledger records every message a pool acknowledged with 250, and which pod said it: the
// checker compares it with what reached the sink. Refusals are counted, never retried
// under the same number, so a number in the ledger was acknowledged exactly once.
type ledger struct {
	mu      sync.Mutex
	acked   map[int]string // sequence number -> pod that answered 250
	refused int
	next    int
}

func newLedger() *ledger { return &ledger{acked: map[int]string{}} }

func (l *ledger) take() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.next++
	return l.next
}

func (l *ledger) record(seq int, pod string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.refused++
		return
	}
	l.acked[seq] = pod
}

// counts is the number of acknowledged and refused messages so far.
func (l *ledger) counts() (acked, refused int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked), l.refused
}

// ackedBy is the number of messages the pod acknowledged.
func (l *ledger) ackedBy(pod string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, p := range l.acked {
		if p == pod {
			n++
		}
	}
	return n
}

// check compares the ledger with the sink: acknowledged messages missing at the sink (the
// first few by number), and copies delivered more than once.
func (l *ledger) check(sink *smtpSink, pods ...string) (missing []int, duplicates int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for seq, pod := range l.acked {
		if len(pods) > 0 && !slices.Contains(pods, pod) {
			continue
		}
		switch n := sink.delivered(seq); {
		case n == 0:
			missing = append(missing, seq)
		case n > 1:
			duplicates += n - 1
		}
	}
	sort.Ints(missing)
	return missing, duplicates
}

// report is the checker's line: acknowledged, refused, delivered, lost and duplicates.
func (l *ledger) report(sink *smtpSink) string {
	missing, duplicates := l.check(sink)
	acked, refused := l.counts()
	delivered, copies := sink.total()
	return fmt.Sprintf("acknowledged %d, refused %d, at the sink %d messages in %d copies, lost %d, duplicates %d",
		acked, refused, delivered, copies, len(missing), duplicates)
}

// expectDelivered waits until every acknowledged message is at the sink and logs the
// checker's line.
func (l *ledger) expectDelivered(t *testing.T, sink *smtpSink) {
	t.Helper()
	Eventually(t, 150*time.Second, "every acknowledged message at the sink", func() (bool, string) {
		missing, _ := l.check(sink)
		return len(missing) == 0, l.report(sink)
	})
	t.Logf("checker: %s", l.report(sink))
}

// load sends messages through a pool from a few workers, one connection per message, each
// to the next of the pool's pods, until stopped. targets is read afresh for every message:
// pods come and go while faults are injected.
type load struct {
	stop chan struct{}
	done sync.WaitGroup
}

func startLoad(l *ledger, workers int, pause time.Duration, targets func() map[string]string) *load {
	ld := &load{stop: make(chan struct{})}
	for w := 0; w < workers; w++ {
		ld.done.Add(1)
		go func(w int) {
			defer ld.done.Done()
			for i := w; ; i++ {
				select {
				case <-ld.stop:
					return
				default:
				}
				pods := targets()
				if len(pods) == 0 {
					time.Sleep(200 * time.Millisecond)
					continue
				}
				names := make([]string, 0, len(pods))
				for name := range pods {
					names = append(names, name)
				}
				sort.Strings(names)
				pod := names[i%len(names)]
				seq := l.take()
				err := sendOne(pods[pod], seq)
				l.record(seq, pod, err)
				if err != nil {
					time.Sleep(100 * time.Millisecond)
				} else if pause > 0 {
					time.Sleep(pause)
				}
			}
		}(w)
	}
	return ld
}

// halt stops the workers and waits for the messages in flight (each has its deadline).
func (ld *load) halt() {
	select {
	case <-ld.stop:
	default:
		close(ld.stop)
	}
	ld.done.Wait()
}

// podTargets follows the relay addresses of a pool's Ready pods, refreshed every two
// seconds, for the load: what the pool's Service would route to. Pods listed with
// leaveOut are left out (a pod whose kubelet is stopped stays Ready in the API).
type podTargets struct {
	mu    sync.Mutex
	addrs map[string]string
	skip  map[string]bool
	stop  chan struct{}
}

func followPods(ns, pool string) *podTargets {
	pt := &podTargets{addrs: map[string]string{}, skip: map[string]bool{}, stop: make(chan struct{})}
	refresh := func() {
		out, err := KubectlErr("get", "pods", "-n", ns, "-l", "smtpfleet.io/pool="+pool, "-o", "json")
		if err != nil {
			return
		}
		var list struct {
			Items []struct {
				Metadata struct {
					Name string `json:"name"`
				} `json:"metadata"`
				Status struct {
					PodIP      string `json:"podIP"`
					Conditions []struct {
						Type   string `json:"type"`
						Status string `json:"status"`
					} `json:"conditions"`
				} `json:"status"`
			} `json:"items"`
		}
		if json.Unmarshal([]byte(out), &list) != nil {
			return
		}
		addrs := map[string]string{}
		for _, pod := range list.Items {
			for _, c := range pod.Status.Conditions {
				if c.Type == "Ready" && c.Status == "True" && pod.Status.PodIP != "" {
					addrs[pod.Metadata.Name] = net.JoinHostPort(pod.Status.PodIP, "2525")
				}
			}
		}
		pt.mu.Lock()
		pt.addrs = addrs
		pt.mu.Unlock()
	}
	refresh()
	go func() {
		for {
			select {
			case <-pt.stop:
				return
			case <-time.After(2 * time.Second):
				refresh()
			}
		}
	}()
	return pt
}

func (pt *podTargets) get() map[string]string {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	out := map[string]string{}
	for pod, addr := range pt.addrs {
		if !pt.skip[pod] {
			out[pod] = addr
		}
	}
	return out
}

func (pt *podTargets) leaveOut(pod string, out bool) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	pt.skip[pod] = out
}

func (pt *podTargets) close() { close(pt.stop) }
