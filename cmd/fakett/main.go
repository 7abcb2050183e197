// Command fakett serves the fake Teletracker auth API (see internal/fakett) on
// a loopback address, for demos, scripts and benchmarks. It prints its URL on
// stdout and runs until SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakett:", err)
		os.Exit(1)
	}
}

// run serves until ctx ends. args are the command-line flags; the URL goes to
// stdout and usage to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	flags := flag.NewFlagSet("fakett", flag.ContinueOnError)
	flags.SetOutput(stderr)
	addr := flags.String("addr", "127.0.0.1:0", "listen address; must be a loopback IP")
	user := flags.String("user", "demo", "the one user's name")
	password := flags.String("password", "demo-password", "the one user's password")
	tokenLifetime := flags.Duration("token-lifetime", time.Hour, "bearer token lifetime")
	refreshLifetime := flags.Duration("refresh-lifetime", 720*time.Hour, "refresh token lifetime")
	skew := flags.Duration("skew", 0, "error of the clock in the reported expiration times")
	addrFile := flags.String("addr-file", "", "once listening, write the URL to this file")
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if flags.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", flags.Args())
	}
	if *user == "" || *password == "" {
		return errors.New("-user and -password must not be empty")
	}
	if *tokenLifetime <= 0 || *refreshLifetime <= 0 {
		return errors.New("-token-lifetime and -refresh-lifetime must be positive")
	}
	if err := checkLoopback(*addr); err != nil {
		return err
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: fakett.New(fakett.Options{
			Users:           map[string]string{*user: *password},
			TokenLifetime:   *tokenLifetime,
			RefreshLifetime: *refreshLifetime,
			Skew:            *skew,
		}),
		ReadHeaderTimeout: 10 * time.Second,
		// Requests end with ctx, so a delayed answer does not hold up shutdown.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	url := "http://" + ln.Addr().String()
	if *addrFile != "" {
		if err := writeFileAtomic(*addrFile, url); err != nil {
			_ = srv.Close()
			return err
		}
	}
	fmt.Fprintln(stdout, url)

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shutdownCtx)
}

// checkLoopback refuses an address that is not a loopback IP and port.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("refusing to listen on %q: not a loopback IP", addr)
	}
	return nil
}

// writeFileAtomic writes content to path through a temporary file in the same
// directory and a rename, so a reader never sees a partial file.
func writeFileAtomic(path, content string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".fakett-addr-*")
	if err != nil {
		return err
	}
	_, err = tmp.WriteString(content)
	if closeErr := tmp.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
	}
	return err
}
