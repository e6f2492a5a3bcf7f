// Command probe is the test image of the one-node cluster (test/k8s): a pod
// runs it to hold a network namespace, and it speaks to the servers of
// test/e2e/traffic.go, so that a person can try the cluster with kubectl
// exec (KEEP=1):
//
//	probe                      wait for SIGTERM (the pod's main process)
//	probe tcp 203.0.113.10:8080   print the client address the TCP server saw
//	probe udp 203.0.113.10:8081   print the client address the UDP server saw
//	probe ping 203.0.113.10       one ICMP echo; print who answered
//	probe serve                TCP :8080 and UDP :8081 servers that answer with the peer address
package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const timeout = 3 * time.Second

func main() {
	if len(os.Args) < 2 {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
		return
	}
	arg := ""
	if len(os.Args) > 2 {
		arg = os.Args[2]
	}
	var err error
	switch os.Args[1] {
	case "tcp":
		err = tcp(arg)
	case "udp":
		err = udp(arg)
	case "ping":
		err = ping(arg)
	case "serve":
		err = serve()
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
}

// tcp prints the first line the server sends: the client address it saw.
func tcp(addr string) error {
	c, err := net.DialTimeout("tcp4", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	fmt.Print(line)
	return nil
}

// udp sends a token and prints the peer from the answer "<token> <peer>".
func udp(addr string) error {
	c, err := net.Dial("udp4", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	token := fmt.Sprintf("probe-%d", time.Now().UnixNano())
	if _, err := c.Write([]byte(token)); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	_, peer, _ := strings.Cut(string(buf[:n]), " ")
	fmt.Println(peer)
	return nil
}

// ping sends one echo request over a raw socket (the container runtime's
// default capabilities include CAP_NET_RAW) and waits for its reply.
func ping(addr string) error {
	c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return err
	}
	defer c.Close()
	dst, err := net.ResolveIPAddr("ip4", addr)
	if err != nil {
		return err
	}
	id := uint16(os.Getpid())
	msg := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), 0, 1}
	msg = append(msg, "probe"...)
	binary.BigEndian.PutUint16(msg[2:], checksum(msg))
	if _, err := c.WriteTo(msg, dst); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return err
		}
		if n >= 8 && buf[0] == 0 && binary.BigEndian.Uint16(buf[4:]) == id {
			fmt.Println("reply from", from)
			return nil
		}
	}
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// serve answers like test/e2e's servers: TCP writes the peer address and
// echoes, UDP answers "<token> <peer>".
func serve() error {
	ln, err := net.Listen("tcp4", ":8080")
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp4", ":8081")
	if err != nil {
		return err
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, peer, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(string(buf[:n])+" "+peer.String()), peer)
		}
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			fmt.Fprintln(c, c.RemoteAddr())
			io.Copy(c, c)
		}()
	}
}
