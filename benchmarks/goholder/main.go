// A reference for benchmarks/bench_cold_start.py: a Go standard-library
// proxy that holds requests until an EndpointSlice watch says the Service
// has a ready pod, then forwards each to that pod's ip:port with
// httputil.ReverseProxy, its http.Transport set up as benchmarks/goproxy's
// (MaxIdleConns 1000, MaxIdleConnsPerHost 200, a 500 ms dial timeout).
//
// It measures the release itself with Go's runtime, in the same harness as
// the interceptor: the same fake API server, watch event, pod and client.
// It serves one Service and nothing else an interceptor does (no routing
// table, no metrics, no TLS), so it is a floor for the release, not a
// second implementation.  Standard library only, no modules: Debian's
// golang-go builds it with `go build -o goholder main.go`.  Run it with
// GOMAXPROCS=1 and pinned to one core to compare with one interceptor
// process.
//
// The admin address answers /readyz (200 once the watch is open) and
// /queue ({"NAMESPACE/SERVICE": {"Concurrency": N, "RPS": 0}}, N being the
// requests in flight), as the interceptor's does.
//
// Usage: goholder -listen ADDR -admin ADDR -api URL -namespace NS
// -service NAME [-port-name http]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

type endpointSlice struct {
	Metadata struct {
		ResourceVersion string `json:"resourceVersion"`
	} `json:"metadata"`
	Endpoints []struct {
		Addresses  []string `json:"addresses"`
		Conditions struct {
			Ready *bool `json:"ready"`
		} `json:"conditions"`
	} `json:"endpoints"`
	Ports []struct {
		Name string `json:"name"`
		Port int    `json:"port"`
	} `json:"ports"`
}

type sliceList struct {
	Metadata struct {
		ResourceVersion string `json:"resourceVersion"`
	} `json:"metadata"`
	Items []endpointSlice `json:"items"`
}

type watchEvent struct {
	Type   string        `json:"type"`
	Object endpointSlice `json:"object"`
}

// gate holds requests until a pod is known.
type gate struct {
	mu      sync.Mutex
	pod     string
	ready   chan struct{}
	opened  atomic.Bool
	pending atomic.Int64
}

// readyPod is the first ready endpoint's ip:port for portName, or "".
func readyPod(s *endpointSlice, portName string) string {
	port := 0
	for _, p := range s.Ports {
		if p.Name == portName {
			port = p.Port
		}
	}
	if port == 0 {
		return ""
	}
	for _, e := range s.Endpoints {
		if e.Conditions.Ready != nil && *e.Conditions.Ready && len(e.Addresses) > 0 {
			return net.JoinHostPort(e.Addresses[0], strconv.Itoa(port))
		}
	}
	return ""
}

func (g *gate) offer(pod string) {
	if pod == "" {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.pod == "" {
		g.pod = pod
		close(g.ready)
	}
}

// watch lists the Service's EndpointSlices, then watches them from that
// list's resourceVersion; it returns when the stream ends.
func (g *gate) watch(api, namespace, service, portName string) error {
	base := fmt.Sprintf("%s/apis/discovery.k8s.io/v1/namespaces/%s/endpointslices?labelSelector=%s",
		api, namespace, url.QueryEscape("kubernetes.io/service-name="+service))
	resp, err := http.Get(base)
	if err != nil {
		return err
	}
	var list sliceList
	err = json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if err != nil {
		return err
	}
	for i := range list.Items {
		g.offer(readyPod(&list.Items[i], portName))
	}
	resp, err = http.Get(base + "&watch=true&resourceVersion=" + list.Metadata.ResourceVersion)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	g.opened.Store(true)
	dec := json.NewDecoder(resp.Body)
	for {
		var ev watchEvent
		if err := dec.Decode(&ev); err != nil {
			return err
		}
		if ev.Type == "ADDED" || ev.Type == "MODIFIED" {
			g.offer(readyPod(&ev.Object, portName))
		}
	}
}

type podKey struct{}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve on")
	admin := flag.String("admin", "127.0.0.1:9090", "admin address (/readyz, /queue)")
	api := flag.String("api", "http://127.0.0.1:6443", "the API server's URL")
	namespace := flag.String("namespace", "default", "the Service's namespace")
	service := flag.String("service", "app", "the Service's name")
	portName := flag.String("port-name", "http", "the Service port's name")
	maxConns := flag.Int("max-conns-per-host", 0,
		"http.Transport's MaxConnsPerHost (0, as the Go interceptor has it: no bound)")
	flag.Parse()

	g := &gate{ready: make(chan struct{})}
	go func() {
		for {
			err := g.watch(*api, *namespace, *service, *portName)
			log.Printf("goholder: watch ended: %v", err)
			time.Sleep(100 * time.Millisecond)
		}
	}()

	dialer := &net.Dialer{Timeout: 500 * time.Millisecond, KeepAlive: 30 * time.Second}
	proxy := &httputil.ReverseProxy{
		Director: func(r *http.Request) {
			r.URL.Scheme = "http"
			r.URL.Host = r.Context().Value(podKey{}).(string)
		},
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           dialer.DialContext,
			MaxIdleConns:          1000,
			MaxIdleConnsPerHost:   200,
			MaxConnsPerHost:       *maxConns,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: 1 * time.Second,
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.pending.Add(1)
		defer g.pending.Add(-1)
		select {
		case <-g.ready:
		default:
			select {
			case <-g.ready:
				w.Header().Set("X-KEDA-HTTP-Cold-Start", "true")
			case <-r.Context().Done():
				return
			}
		}
		g.mu.Lock()
		pod := g.pod
		g.mu.Unlock()
		proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), podKey{}, pod)))
	})

	key := *namespace + "/" + *service
	adminMux := http.NewServeMux()
	adminMux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !g.opened.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "OK")
	})
	adminMux.HandleFunc("/queue", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]map[string]int64{
			key: {"Concurrency": g.pending.Load(), "RPS": 0},
		})
	})

	for _, a := range []struct {
		addr    string
		handler http.Handler
	}{{*admin, adminMux}, {*listen, handler}} {
		ln, err := net.Listen("tcp", a.addr)
		if err != nil {
			log.Fatal(err)
		}
		go func(ln net.Listener, h http.Handler) {
			log.Fatal((&http.Server{Handler: h}).Serve(ln))
		}(ln, a.handler)
	}
	log.Printf("goholder: %s, admin %s, watching %s EndpointSlices at %s", *listen, *admin, key, *api)
	select {}
}
