// A reference reverse proxy for benchmarks/bench_burst.py: the Go standard
// library's httputil.ReverseProxy in front of one upstream, with its
// http.Transport set up as the Go KEDA interceptor sets up its own
// (MaxIdleConns 1000, MaxIdleConnsPerHost 200, a 500 ms dial timeout,
// keep-alives on).  Standard library only, no modules: Debian's golang-go
// builds it with `go build -o goproxy main.go`.  Run it with GOMAXPROCS=1
// and pinned to one core to compare with one interceptor process.
//
// Usage: goproxy -listen 127.0.0.1:PORT -upstream 127.0.0.1:PORT
package main

import (
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve on")
	upstream := flag.String("upstream", "127.0.0.1:8081", "host:port to forward to")
	flag.Parse()

	target := &url.URL{Scheme: "http", Host: *upstream}
	dialer := &net.Dialer{Timeout: 500 * time.Millisecond, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		MaxIdleConns:          1000,
		MaxIdleConnsPerHost:   200,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: 1 * time.Second,
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = transport
	proxy.ErrorLog = log.New(io.Discard, "", 0)

	server := &http.Server{Addr: *listen, Handler: proxy}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("goproxy: %s -> %s", ln.Addr(), target)
	log.Fatal(server.Serve(ln))
}
