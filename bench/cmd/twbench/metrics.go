package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// acceptedLogRecords sums otelcol_receiver_accepted_log_records* from the
// Collector's Prometheus endpoint.
func acceptedLogRecords(ctx context.Context, addr string) (int64, error) {
	return sumMetric(ctx, "http://"+addr+"/metrics", "otelcol_receiver_accepted_log_records")
}

// sumMetric sums the samples of every series whose name starts with prefix.
func sumMetric(ctx context.Context, url, prefix string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		sum += v
	}
	return int64(sum), sc.Err()
}
