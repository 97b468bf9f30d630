package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// replicatedPool is a pool over both real nodes: data centre a (zone real-a, e2e-node-1)
// with two nodes and data centre b (zone real-b, e2e-node-2) with one, every message on
// two nodes in two data centres.
func replicatedPool(ns, name string, aReplicas int) string {
	return fmt.Sprintf(`apiVersion: smtpfleet.io/v1alpha1
kind: RelayPool
metadata:
  name: %[2]s
  namespace: %[1]s
spec:
  hostname: relay.example.com
  image: %[3]s
  imagePullPolicy: Never
  dataCentres:
    - name: a
      zone: real-a
      replicas: %[6]d
      tolerations:
        - { key: %[4]s, operator: Exists, effect: NoSchedule }
    - name: b
      zone: real-b
      replicas: 1
      tolerations:
        - { key: %[4]s, operator: Exists, effect: NoSchedule }
  queue:
    replicationFactor: 2
    minDataCentres: 2
    retry:
      schedule: [2s, 5s]
  tls:
    selfSigned: {}
  relay:
    allowedNetworks: [%[5]s]
---
apiVersion: smtpfleet.io/v1alpha1
kind: MailDomain
metadata:
  name: sender-test
  namespace: %[1]s
spec:
  domain: sender.test
  relayPoolRef: { name: %[2]s }
`, ns, name, nodeImage, realNodeTaint, "10.244.0.0/16", aReplicas)
}

// realNodePid is the pid of a real node's kubelet or containerd (e2e/node.sh's pid files).
func realNodePid(t *testing.T, node, process string) int {
	t.Helper()
	dir := "/run/smtpfleet-e2e"
	if node != "e2e-node-1" {
		dir += "-" + strings.TrimPrefix(node, "e2e-node-")
	}
	raw, err := os.ReadFile(filepath.Join(dir, "pids", process))
	if err != nil {
		t.Fatalf("%s of %s: %v", process, node, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatalf("%s of %s: pid %q", process, node, raw)
	}
	return pid
}

// TestRealPodsReplicated runs a replicated pool on the two real nodes, one data centre on
// each, and injects the faults a data centre meets while a ledger load runs: a data centre
// lost (its kubelet frozen and its smtp-node killed, so nothing restarts it: the survivors
// take its mail over and deliver it while it is gone), then a scale-down that drains the
// leaving node first, then deleting the pool with mail queued. The checker fails on any
// acknowledged message missing at the sink.
func TestRealPodsReplicated(t *testing.T) {
	realNodes(t, 2)
	sink, ns := mailWorld(t, "replicated")
	const pool = "rp"
	pods := []string{pool + "-a-0", pool + "-a-1", pool + "-b-0"}
	t.Cleanup(func() {
		if t.Failed() {
			for _, pod := range pods {
				out, _ := KubectlErr("logs", "-n", ns, pod, "--tail=40")
				t.Logf("%s log:\n%s", pod, out)
			}
			out, _ := KubectlErr("get", "relaypool/"+pool, "-n", ns, "-o",
				`jsonpath={.metadata.deletionTimestamp}{"\n"}{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}`)
			t.Logf("pool:\n%s", out)
			out, _ = KubectlErr("get", "events", "-n", ns, "--field-selector", "involvedObject.name="+pool, "--sort-by=.eventTime",
				"-o", `jsonpath={range .items[*]}{.eventTime} {.type} {.reason}: {.note}{.message}{"\n"}{end}`)
			t.Logf("events of the pool:\n%s", tail(out, 40))
		}
	})
	started := time.Now()
	MustApply(t, replicatedPool(ns, pool, 2))
	for _, dc := range []string{"a", "b"} {
		Eventually(t, 60*time.Second, "statefulset "+pool+"-"+dc, func() (bool, string) {
			return exists(ns, "statefulset/"+pool+"-"+dc), "not created yet"
		})
	}
	eventuallyField(t, 240*time.Second, ns, "relaypool/"+pool, `.status.conditions[?(@.type=="Ready")].status`, "True")
	for _, dc := range []string{"a", "b"} {
		Kubectl(t, "rollout", "status", "-n", ns, "statefulset/"+pool+"-"+dc, "--timeout=240s")
	}
	for _, pod := range pods {
		Kubectl(t, "wait", "-n", ns, "--for=condition=Ready", "pod/"+pod, "--timeout=240s")
	}
	t.Logf("pool Ready %s after it was applied:\n%s", time.Since(started).Round(time.Second),
		Kubectl(t, "get", "pods", "-n", ns, "-o", "wide"))
	for pod, want := range map[string]string{pods[0]: "e2e-node-1", pods[1]: "e2e-node-1", pods[2]: "e2e-node-2"} {
		if got := getPod(t, ns, pod).Spec.NodeName; got != want {
			t.Fatalf("%s runs on %s, want %s", pod, got, want)
		}
	}

	targets := followPods(ns, pool)
	defer targets.close()
	book := newLedger()

	t.Run("a lost data centre's mail is delivered by the survivors", func(t *testing.T) {
		victim := pool + "-b-0"
		sink.deferring.Store(true)
		ld := startLoad(book, 4, 0, targets.get)
		defer ld.halt()
		Eventually(t, 90*time.Second, "100 messages acknowledged", func() (bool, string) {
			acked, refused := book.counts()
			return acked >= 100 && book.ackedBy(victim) >= 20, fmt.Sprintf("%d acknowledged (%d by %s), %d refused",
				acked, book.ackedBy(victim), victim, refused)
		})
		// Data centre b is lost: its kubelet stops (nothing restarts the container) and
		// its smtp-node dies with SIGKILL.
		kubelet := realNodePid(t, "e2e-node-2", "kubelet")
		if err := syscall.Kill(kubelet, syscall.SIGSTOP); err != nil {
			t.Fatalf("SIGSTOP the kubelet of e2e-node-2: %v", err)
		}
		resumed := false
		resume := func() {
			if !resumed {
				resumed = true
				if err := syscall.Kill(kubelet, syscall.SIGCONT); err != nil {
					t.Errorf("SIGCONT the kubelet of e2e-node-2: %v", err)
				}
			}
		}
		defer resume()
		running := getPod(t, ns, victim)
		pid := containerPid(t, running.Spec.NodeName, running.Status.ContainerStatuses[0].ContainerID)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill -9 %s (pid %d): %v", victim, pid, err)
		}
		killed := time.Now()
		targets.leaveOut(victim, true)
		victimAcked := book.ackedBy(victim)
		missing, _ := book.check(sink, victim)
		acked, refused := book.counts()
		t.Logf("data centre b lost: %s killed with %d acknowledged messages, %d of them not delivered (pool: %d acknowledged, %d refused); "+
			"until it is back the survivors refuse new mail with 451: they cannot place a second copy in another data centre",
			victim, victimAcked, len(missing), acked, refused)
		// The survivors keep taking mail for a while, then the sink accepts again.
		time.Sleep(5 * time.Second)
		sink.deferring.Store(false)
		Eventually(t, 120*time.Second, "the lost node's acknowledged mail delivered by the survivors", func() (bool, string) {
			missing, _ := book.check(sink, victim)
			if len(missing) == 0 {
				return true, ""
			}
			return false, fmt.Sprintf("%d of %s's messages missing, the first %d", len(missing), victim, missing[0])
		})
		t.Logf("all of %s's acknowledged messages delivered %s after it died, with its node still down",
			victim, time.Since(killed).Round(time.Second))
		if s := getPod(t, ns, victim).Status.ContainerStatuses[0]; s.ContainerID != running.Status.ContainerStatuses[0].ContainerID && s.State.Running != nil {
			t.Errorf("%s was restarted while its kubelet was stopped: the survivors did not do it alone", victim)
		}
		ld.halt()
		resume()
		targets.leaveOut(victim, false)
		book.expectDelivered(t, sink)
		Kubectl(t, "wait", "-n", ns, "--for=condition=Ready", "pod/"+victim, "--timeout=180s")
		eventuallyField(t, 120*time.Second, ns, "relaypool/"+pool, `.status.conditions[?(@.type=="QueueReplicated")].status`, "True")
		t.Logf("%s back and Ready %s after it died:\n%s", victim, time.Since(killed).Round(time.Second),
			Kubectl(t, "get", "pods", "-n", ns, "-o", "wide"))
	})

	t.Run("a deleted pod comes back on its claim and loses nothing", func(t *testing.T) {
		victim := pool + "-a-0"
		claimUID := jsonpath(t, ns, "pvc/spool-"+victim, ".metadata.uid")
		podUID := jsonpath(t, ns, "pod/"+victim, ".metadata.uid")
		sink.deferring.Store(true)
		before := book.ackedBy(victim)
		ld := startLoad(book, 4, 20*time.Millisecond, targets.get)
		defer ld.halt()
		Eventually(t, 90*time.Second, "the pod acknowledges mail", func() (bool, string) {
			return book.ackedBy(victim) >= before+20, fmt.Sprintf("%d new messages acknowledged by %s", book.ackedBy(victim)-before, victim)
		})
		deleted := time.Now()
		Kubectl(t, "delete", "pod/"+victim, "-n", ns, "--wait=false")
		Eventually(t, 180*time.Second, "the pod recreated and Ready", func() (bool, string) {
			uid, _ := KubectlErr("get", "pod/"+victim, "-n", ns, "-o", "jsonpath={.metadata.uid}")
			ready, _ := KubectlErr("get", "pod/"+victim, "-n", ns, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
			return uid != "" && uid != podUID && ready == "True", fmt.Sprintf("uid %q, ready %q", uid, ready)
		})
		t.Logf("%s recreated and Ready %s after it was deleted", victim, time.Since(deleted).Round(time.Second))
		if uid := jsonpath(t, ns, "pvc/spool-"+victim, ".metadata.uid"); uid != claimUID {
			t.Errorf("the recreated pod has a new claim (uid %s, was %s): its spool is gone", uid, claimUID)
		}
		ld.halt()
		sink.deferring.Store(false)
		book.expectDelivered(t, sink)
	})

	t.Run("a rolling change restarts one node at a time and loses nothing", func(t *testing.T) {
		// Deliveries wait, so every restarted node holds mail the others must cover.
		sink.deferring.Store(true)
		ld := startLoad(book, 4, 20*time.Millisecond, targets.get)
		defer ld.halt()
		started := time.Now()
		Kubectl(t, "patch", "relaypool/"+pool, "-n", ns, "--type=merge", "-p",
			`{"spec":{"resources":{"requests":{"cpu":"20m"}}}}`)
		mostDown, lastDown := 0, ""
		Eventually(t, 300*time.Second, "the change rolled out to every node", func() (bool, string) {
			down := []string{}
			for _, pod := range pods {
				ready, _ := KubectlErr("get", "pod/"+pod, "-n", ns, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
				if ready != "True" {
					down = append(down, pod)
				}
			}
			if len(down) > mostDown {
				mostDown, lastDown = len(down), strings.Join(down, ", ")
			}
			cpu := 0
			for _, pod := range pods {
				if jsonpath(t, ns, "pod/"+pod, ".spec.containers[0].resources.requests.cpu") == "20m" {
					cpu++
				}
			}
			reason := jsonpath(t, ns, "relaypool/"+pool, `.status.conditions[?(@.type=="RollingUpdate")].reason`)
			return cpu == len(pods) && len(down) == 0 && reason == "RolledOut",
				fmt.Sprintf("%d of %d pods on the new template, not ready now %v, RollingUpdate %s", cpu, len(pods), down, reason)
		})
		t.Logf("rolled out to %d nodes in %s; at most %d node(s) not ready at once (%s)", len(pods),
			time.Since(started).Round(time.Second), mostDown, lastDown)
		if mostDown > 1 {
			t.Errorf("%d nodes were down at once during the roll (%s): the roll must restart one at a time", mostDown, lastDown)
		}
		reasons := eventReasons(t, ns, "RelayPool", pool)
		// RollingUpdateStarted comes from the pass that holds the nodes; when that pass's
		// status write is refused as stale, the next pass releases a node at once and the
		// Event is not repeated, so it is not required here.
		if want := []string{"NodeReleased", "NodeReleased", "NodeReleased", "RolledOut"}; !inOrder(reasons, want) {
			t.Errorf("events %v, want %v in this order", reasons, want)
		}
		ld.halt()
		sink.deferring.Store(false)
		book.expectDelivered(t, sink)
	})

	t.Run("scale-down drains the leaving node before it goes", func(t *testing.T) {
		leaving, claim := pool+"-a-1", "spool-"+pool+"-a-1"
		// Deliveries wait, so the leaving node owns mail when it is asked to drain.
		sink.deferring.Store(true)
		before := book.ackedBy(leaving)
		ld := startLoad(book, 4, 20*time.Millisecond, targets.get)
		defer ld.halt()
		Eventually(t, 90*time.Second, "the leaving node acknowledges mail", func() (bool, string) {
			return book.ackedBy(leaving) >= before+20, fmt.Sprintf("%d new messages acknowledged by %s", book.ackedBy(leaving)-before, leaving)
		})
		Kubectl(t, "patch", "relaypool/"+pool, "-n", ns, "--type=json",
			"-p", `[{"op":"replace","path":"/spec/dataCentres/0/replicas","value":1}]`)
		asked := time.Now()
		// Until the node is drained the StatefulSet keeps it and its claim; the claim goes
		// only once the pod is gone. The node itself says when its drain is done.
		token := adminToken(t, ns, pool)
		ip := getPod(t, ns, leaving).Status.PodIP
		drained, scaled, claimGone := time.Time{}, time.Time{}, time.Time{}
		Eventually(t, 240*time.Second, "the node drained, removed and its claim deleted", func() (bool, string) {
			if drained.IsZero() {
				if done, err := drainDone(ip, token); err == nil && done {
					drained = time.Now()
				}
			}
			replicas := jsonpath(t, ns, "statefulset/"+pool+"-a", ".spec.replicas")
			// The claim before the pod: a claim gone while the pod is still there
			// afterwards was deleted while the pod existed (a removed pod never returns
			// here). The other order would see a pod that went away between the reads.
			claimThere, podThere := exists(ns, "pvc/"+claim), exists(ns, "pod/"+leaving)
			now := time.Now()
			if scaled.IsZero() && replicas == "1" {
				scaled = now
				// A drain once done stays done: a node still answering must say so. A node
				// already stopped cannot; the events below show the operator saw it drained.
				done, err := drainDone(ip, token)
				switch {
				case err == nil && !done:
					t.Errorf("the StatefulSet was scaled down before %s said its drain was done", leaving)
				case err != nil && drained.IsZero():
					t.Logf("%s stopped before it was seen drained here (%v); the operator's events tell", leaving, err)
				}
			}
			if claimGone.IsZero() && !claimThere {
				claimGone = now
				if podThere {
					t.Errorf("the claim %s was deleted while the pod %s still existed", claim, leaving)
				}
			}
			return !claimGone.IsZero() && !podThere, fmt.Sprintf("statefulset replicas %s, pod there %v, claim there %v, drained %v",
				replicas, podThere, claimThere, !drained.IsZero())
		})
		reasons := eventReasons(t, ns, "RelayPool", pool)
		if want := []string{"ScalingDown", "NodeDrained", "ScaledDown"}; !inOrder(reasons, want) {
			t.Errorf("events %v, want %v in this order", reasons, want)
		}
		t.Logf("%s drained %s after the scale-down was asked, StatefulSet lowered after %s, claim deleted after %s",
			leaving, drained.Sub(asked).Round(time.Second), scaled.Sub(asked).Round(time.Second), claimGone.Sub(asked).Round(time.Second))
		eventuallyField(t, 60*time.Second, ns, "relaypool/"+pool, `.status.conditions[?(@.type=="ScalingDown")].status`, "False")
		ld.halt()
		sink.deferring.Store(false)
		book.expectDelivered(t, sink)
	})

	t.Run("an autoscaled pool grows under a backlog and shrinks back through drains", func(t *testing.T) {
		replicas := func() string {
			return jsonpath(t, ns, "statefulset/"+pool+"-a", ".spec.replicas") + "," + jsonpath(t, ns, "statefulset/"+pool+"-b", ".spec.replicas")
		}
		sink.deferring.Store(true)
		Kubectl(t, "patch", "relaypool/"+pool, "-n", ns, "--type=merge", "-p",
			`{"spec":{"autoscaling":{"minReplicas":1,"maxReplicas":2,"targetQueuePerReplica":10,"scaleDownStabilization":"30s"}}}`)
		ld := startLoad(book, 4, 20*time.Millisecond, targets.get)
		defer ld.halt()
		grown := time.Now()
		Eventually(t, 180*time.Second, "both data centres grown to 2 under the backlog", func() (bool, string) {
			r := replicas()
			return r == "2,2", fmt.Sprintf("replicas a,b = %s; queue %s", r, jsonpath(t, ns, "relaypool/"+pool, ".status.queue.depth"))
		})
		ld.halt()
		for _, pod := range []string{pool + "-a-1", pool + "-b-1"} {
			Kubectl(t, "wait", "-n", ns, "--for=condition=Ready", "pod/"+pod, "--timeout=180s")
		}
		t.Logf("grown to 2 nodes per data centre %s after the backlog began:\n%s", time.Since(grown).Round(time.Second),
			Kubectl(t, "get", "pods", "-n", ns, "-o", "wide"))
		sink.deferring.Store(false)
		shrunk := time.Now()
		Eventually(t, 300*time.Second, "both data centres back to 1 through drains", func() (bool, string) {
			r := replicas()
			gone := !exists(ns, "pod/"+pool+"-a-1") && !exists(ns, "pod/"+pool+"-b-1")
			return r == "1,1" && gone, fmt.Sprintf("replicas a,b = %s, added pods gone %v; queue %s", r, gone,
				jsonpath(t, ns, "relaypool/"+pool, ".status.queue.depth"))
		})
		reasons := eventReasons(t, ns, "RelayPool", pool)
		// Repeats of an Event with the same note within ten minutes (rp-a-1 drained in the
		// scale-down above too) are folded into the earlier Event's series, which keeps
		// its place: one drain's Events after the autoscaler's are what the order shows.
		if want := []string{"Autoscaled", "Autoscaled", "NodeDrained", "ScaledDown"}; !inOrder(reasons, want) {
			t.Errorf("events %v, want %v in this order (after the earlier ones)", reasons, want)
		}
		t.Logf("shrunk back through drains %s after the backlog cleared", time.Since(shrunk).Round(time.Second))
		Kubectl(t, "patch", "relaypool/"+pool, "-n", ns, "--type=merge", "-p", `{"spec":{"autoscaling":null}}`)
		book.expectDelivered(t, sink)
	})

	t.Run("deleting the pool waits for its queued mail", func(t *testing.T) {
		sink.deferring.Store(true)
		acked, _ := book.counts()
		ld := startLoad(book, 2, 50*time.Millisecond, targets.get)
		Eventually(t, 60*time.Second, "30 more messages acknowledged", func() (bool, string) {
			now, refused := book.counts()
			return now >= acked+30, fmt.Sprintf("%d acknowledged, %d refused", now-acked, refused)
		})
		ld.halt()
		Kubectl(t, "delete", "relaypool/"+pool, "-n", ns, "--wait=false")
		eventuallyField(t, 60*time.Second, ns, "relaypool/"+pool, `.status.conditions[?(@.type=="DeletionBlocked")].reason`, "MailQueued")
		t.Logf("DeletionBlocked: %s", jsonpath(t, ns, "relaypool/"+pool, `.status.conditions[?(@.type=="DeletionBlocked")].message`))
		Eventually(t, 30*time.Second, "a Warning event DeletionBlocked", func() (bool, string) {
			reasons := eventReasons(t, ns, "RelayPool", pool)
			return slices.Contains(reasons, "DeletionBlocked"), fmt.Sprintf("events %v", reasons)
		})
		time.Sleep(5 * time.Second)
		if !exists(ns, "relaypool/"+pool) {
			t.Fatalf("the pool was deleted with mail queued")
		}
		sink.deferring.Store(false)
		// The queue drains; the pool goes once nothing is left on the nodes. Copies left
		// behind on a node after their message was delivered (a removal that did not reach
		// every holder) still hold it: then every acknowledged message must be at the
		// sink, and the force annotation releases the pool.
		left := ""
		Eventually(t, 180*time.Second, "the pool deleted, or holding only leftover copies", func() (bool, string) {
			if !exists(ns, "relaypool/"+pool) {
				return true, ""
			}
			left = jsonpath(t, ns, "relaypool/"+pool, `.status.conditions[?(@.type=="DeletionBlocked")].message`)
			missing, _ := book.check(sink)
			return strings.HasPrefix(left, "0 messages are still queued") && len(missing) == 0, left
		})
		if exists(ns, "relaypool/"+pool) {
			t.Logf("every acknowledged message delivered; the pool still holds: %s", left)
			Kubectl(t, "annotate", "relaypool/"+pool, "-n", ns, "smtpfleet.io/force-delete=true")
			Eventually(t, 60*time.Second, "the pool released by the force annotation", func() (bool, string) {
				return !exists(ns, "relaypool/"+pool), "still there"
			})
		}
		missing, duplicates := book.check(sink)
		t.Logf("checker: %s", book.report(sink))
		if len(missing) > 0 {
			t.Errorf("%d acknowledged messages lost, the first %v (duplicates %d)", len(missing), missing[:min(len(missing), 10)], duplicates)
		}
	})
}

// eventReasons are the reasons of the Events about an object, oldest first.
func eventReasons(t *testing.T, ns, kind, name string) []string {
	t.Helper()
	var list struct {
		Items []struct {
			Reason         string    `json:"reason"`
			EventTime      time.Time `json:"eventTime"`
			FirstTimestamp time.Time `json:"firstTimestamp"`
		} `json:"items"`
	}
	out := Kubectl(t, "get", "events", "-n", ns, "--field-selector",
		"involvedObject.kind="+kind+",involvedObject.name="+name, "-o", "json")
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	at := func(i int) time.Time {
		if e := list.Items[i]; !e.EventTime.IsZero() {
			return e.EventTime
		}
		return list.Items[i].FirstTimestamp
	}
	idx := make([]int, len(list.Items))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return at(idx[a]).Before(at(idx[b])) })
	reasons := make([]string, 0, len(idx))
	for _, i := range idx {
		reasons = append(reasons, list.Items[i].Reason)
	}
	return reasons
}

// inOrder reports whether want appears in got as a subsequence.
func inOrder(got, want []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

// adminToken is the pool's admin API token, from its Secret.
func adminToken(t *testing.T, ns, pool string) string {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(jsonpath(t, ns, "secret/"+pool+"-admin", ".data.token"))
	if err != nil || len(raw) == 0 {
		t.Fatalf("the admin token of %s: %v", pool, err)
	}
	return strings.TrimSpace(string(raw))
}

// drainDone asks a node (GET /admin/drain) whether its drain is done.
func drainDone(ip, token string) (bool, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+net.JoinHostPort(ip, "8080")+"/admin/drain", nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Timeout: 3 * time.Second}).Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var report struct {
		Drain struct {
			Done bool `json:"done"`
		} `json:"drain"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&report); err != nil {
		return false, fmt.Errorf("GET /admin/drain: %d: %w", resp.StatusCode, err)
	}
	return report.Drain.Done, nil
}
