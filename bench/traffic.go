package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The connection-rate client and server are this binary run again in the
// pod and remote namespaces (`ip netns exec NS <self>` with $IPMB_ROLE set),
// so that neither shares a process, a heap or a scheduler with the harness.

const roleEnv = "IPMB_ROLE"

// connPorts is how many server ports the connection test spreads over: NAT
// (conntrack's and ours) allocates node ports per remote address and port,
// so one remote port would cap a run at 64,512 connections per timeout.
const connPorts = 8

const connBasePort = 9000

// runRole runs the helper role named by $IPMB_ROLE, if any, and reports
// whether it did.
func runRole() bool {
	switch os.Getenv(roleEnv) {
	case "serve":
		serveMain(os.Args[1:])
	case "connect":
		connectMain(os.Args[1:])
	default:
		return false
	}
	return true
}

// serveMain accepts on connPorts ports: reads one byte, answers one byte,
// then waits for the client's RST.
func serveMain(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	addr := fs.String("addr", serverIP.String(), "address to listen on")
	fs.Parse(args)
	for i := range connPorts {
		ln, err := net.Listen("tcp4", net.JoinHostPort(*addr, strconv.Itoa(connBasePort+i)))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					continue
				}
				go func() {
					defer c.Close()
					b := make([]byte, 1)
					if _, err := io.ReadFull(c, b); err != nil {
						return
					}
					if _, err := c.Write(b); err != nil {
						return
					}
					c.Read(b) // the client's RST (or EOF)
				}()
			}
		}()
	}
	fmt.Println("serving")
	select {}
}

// connResult is what the connect role prints.
type connResult struct {
	Conns    int64   `json:"conns"`
	Errors   int64   `json:"errors"`
	Seconds  float64 `json:"seconds"`
	FirstErr string  `json:"first_error,omitempty"`
}

// connectMain opens connections for a while from several goroutines: each
// connects, sends a byte, reads the answer, and closes with SO_LINGER 0
// (RST), so no port of the pod waits in TIME_WAIT.
func connectMain(args []string) {
	fs := flag.NewFlagSet("connect", flag.ExitOnError)
	addr := fs.String("addr", serverIP.String(), "server address")
	workers := fs.Int("workers", 8, "concurrent connections")
	dur := fs.Duration("duration", 3*time.Second, "how long")
	fs.Parse(args)
	var conns, errs atomic.Int64
	var firstErr atomic.Value
	stop := time.Now().Add(*dur)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := []byte{1}
			d := net.Dialer{Timeout: 2 * time.Second}
			for i := w; time.Now().Before(stop); i++ {
				err := func() error {
					c, err := d.Dial("tcp4", net.JoinHostPort(*addr, strconv.Itoa(connBasePort+i%connPorts)))
					if err != nil {
						return err
					}
					tc := c.(*net.TCPConn)
					defer func() { tc.SetLinger(0); tc.Close() }()
					tc.SetDeadline(time.Now().Add(2 * time.Second))
					if _, err := tc.Write(b); err != nil {
						return err
					}
					_, err = io.ReadFull(tc, b)
					return err
				}()
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				conns.Add(1)
			}
		}()
	}
	wg.Wait()
	r := connResult{Conns: conns.Load(), Errors: errs.Load(), Seconds: time.Since(start).Seconds()}
	if v := firstErr.Load(); v != nil {
		r.FirstErr = v.(string)
	}
	json.NewEncoder(os.Stdout).Encode(r)
}

// startServers starts iperf3 and the connection server in the remote
// namespace.
func (t *Topo) startServers(self string) error {
	ip, err := startBg("ip", "netns", "exec", t.Remote, "iperf3", "-s", "--forceflush", "-B", serverIP.String(), "-p", "5201")
	if err != nil {
		return err
	}
	t.servers = append(t.servers, ip)
	cs, err := startBg("env", roleEnv+"=serve", "ip", "netns", "exec", t.Remote, self, "-addr", serverIP.String())
	if err != nil {
		return err
	}
	t.servers = append(t.servers, cs)
	if err := cs.waitOutput("serving", 0, 10*time.Second); err != nil {
		return fmt.Errorf("connection server in %s: %w", t.Remote, err)
	}
	return ip.waitOutput("Server listening", 0, 10*time.Second)
}

// connRate runs the connection client in the pod namespace.
func (t *Topo) connRate(self string, workers int, d time.Duration) (connResult, error) {
	var r connResult
	out, err := sh("env", roleEnv+"=connect", "ip", "netns", "exec", t.Pod, self,
		"-workers", strconv.Itoa(workers), "-duration", d.String())
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return r, fmt.Errorf("connect output %q: %w", out, err)
	}
	return r, nil
}

// throughput runs one iperf3 TCP stream from the pod for d and returns the
// receiver's bits per second.
func (t *Topo) throughput(d time.Duration) (float64, error) {
	secs := max(1, int(d.Seconds()))
	var out string
	var err error
	for try := 0; try < 3; try++ {
		// The server takes one test at a time; a busy answer right after
		// the previous test ended is retried.
		out, err = nsExec(t.Pod, "iperf3", "-c", serverIP.String(), "-p", "5201", "-t", strconv.Itoa(secs), "-J")
		if err == nil {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	if err != nil {
		return 0, err
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return 0, fmt.Errorf("iperf3 output: %w", err)
	}
	if r.Error != "" {
		return 0, errors.New("iperf3: " + r.Error)
	}
	return r.End.SumReceived.BitsPerSecond, nil
}
