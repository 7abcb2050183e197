// Command scale is the measuring half of make bench-scale (see
// scripts/bench/scale.sh): the engine's cost as the mounts one plugin process
// serves grow from 1 to 1,000, and as the accounts of one mount grow from 1
// to 10,000.
//
//	scale setup   enable and configure mounts (or create one mount's
//	              accounts), timing each step
//	scale idle    watch the processes through two of Vault's ticks: memory,
//	              CPU, the ticks' work, storage operations and upstream calls
//	scale herd    point every mount at a fresh fake at once (or create the
//	              accounts of a mount on it) and watch them all fall due
//	              together
//	scale report  the markdown tables of BENCHMARKS.md's Scale section, or
//	              (-accounts) of its Accounts in one mount section
//
// Each step but report writes its result as JSON to -out; report reads them
// back from the directory they were written to.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: scale setup|idle|herd|report [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "setup":
		err = setup(os.Args[2:])
	case "idle":
		err = idle(os.Args[2:])
	case "herd":
		err = herd(os.Args[2:])
	case "report":
		err = report(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

// vault calls Vault's HTTP API with a token.
type vault struct {
	addr, token string
	client      *http.Client
}

func newVault(addr, token string) *vault {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: time.Minute}
	return &vault{addr: strings.TrimSuffix(addr, "/"), token: token, client: &http.Client{Transport: tr, Timeout: 2 * time.Minute}}
}

// call sends method to /v1/path with body as JSON (none when nil) and
// decodes the answer's data into out (when not nil).
func (v *vault) call(ctx context.Context, method, path string, body, out any) error {
	raw, err := v.do(ctx, method, path, body)
	if err != nil || out == nil {
		return err
	}
	return json.Unmarshal(raw, &struct {
		Data any `json:"data"`
	}{out})
}

// do sends method to /v1/path with body as JSON (none when nil) and returns
// the answer's body. Any status but 200 and 204 is an error.
func (v *vault) do(ctx context.Context, method, path string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, v.addr+"/v1/"+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Vault-Token", v.token)
	resp, err := v.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNoContent {
		return nil, &statusError{status: resp.StatusCode, text: fmt.Sprintf("%s %s: %d %s", method, path, resp.StatusCode, bytes.TrimSpace(raw))}
	}
	return raw, nil
}

// statusError is an answer of Vault's other than 200 and 204.
type statusError struct {
	status int
	text   string
}

func (e *statusError) Error() string { return e.text }

// mountPath is the path of the i-th engine mount (from 1).
func mountPath(prefix string, i int) string {
	return fmt.Sprintf("%s%04d", prefix, i)
}

// accountName is the name of the i-th named account of a mount (from 1).
func accountName(prefix string, i int) string {
	return fmt.Sprintf("%s%05d", prefix, i)
}

// fakeStats is the part of the fake Teletracker's GET /_fake/stats used here.
type fakeStats struct {
	LoginCalls          int64       `json:"login_calls"`
	RefreshCalls        int64       `json:"refresh_calls"`
	Refreshes           int64       `json:"refreshes"`
	ReusedRefreshTokens int64       `json:"reused_refresh_tokens"`
	RejectedRefreshes   int64       `json:"rejected_refreshes"`
	LateRefreshes       int64       `json:"late_refreshes"`
	RefreshCallTimes    []time.Time `json:"refresh_call_times"`
	AuthCallsPerSecond  []struct {
		Second time.Time `json:"second"`
		Calls  int64     `json:"calls"`
	} `json:"auth_calls_per_second"`
}

// getFakeStats reads the fake at url's counters.
func getFakeStats(ctx context.Context, url string) (fakeStats, error) {
	var st fakeStats
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(url, "/")+"/_fake/stats", nil)
	if err != nil {
		return st, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("fake stats: HTTP %d", resp.StatusCode)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// writeJSON writes v to file, indented.
func writeJSON(file string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(file, append(b, '\n'), 0o644)
}
