package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRun(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, []string{"-listen", "127.0.0.1:0", "-limit", "1", "-shared-quota", "-latency", "1ms"}, pw)
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, pr)
	addr, found := strings.CutPrefix(strings.TrimSpace(line), "fusioo-sim listening on ")
	if !found {
		t.Fatalf("first line %q", line)
	}

	client := &http.Client{}
	defer client.CloseIdleConnections()
	status := func(token string) int {
		t.Helper()
		r, _ := http.NewRequest("GET", "http://"+addr+"/v3/apps", nil)
		r.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// -shared-quota: the second token finds the quota used by the first.
	if a, b := status("a"), status("b"); a != 200 || b != 429 {
		t.Fatalf("statuses %d %d", a, b)
	}

	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestRunBadFlags(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"-fault-503", "2"},
		{"-limit", "-1"},
		{"-window", "0s"},
		{"-nope"},
		{"extra"},
	} {
		if err := run(context.Background(), args, io.Discard); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}
