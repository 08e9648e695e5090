package bench

import (
	"bufio"
	"encoding/json"
	"net"
	"strings"
	"testing"
)

// TestQMP drives the QMP client against a scripted server: the greeting,
// events between a command and its answer, an error answer.
func TestQMP(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	go func() {
		defer server.Close()
		r := bufio.NewReader(server)
		server.Write([]byte(`{"QMP": {"version": {}, "capabilities": []}}` + "\n"))
		for _, answer := range []string{
			`{"return": {}}`,
			`{"event": "STOP", "timestamp": {}}` + "\n" + `{"return": {"status": "completed"}}`,
			`{"error": {"class": "GenericError", "desc": "no such thing"}}`,
		} {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			var req map[string]any
			if json.Unmarshal([]byte(line), &req) != nil || req["execute"] == nil {
				server.Write([]byte(`{"error": {"desc": "bad request"}}` + "\n"))
				return
			}
			server.Write([]byte(answer + "\n"))
		}
	}()
	q := qmp{r: bufio.NewReader(client), w: client}
	if _, err := q.read(); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	if _, err := q.do("qmp_capabilities", nil); err != nil {
		t.Fatalf("qmp_capabilities: %v", err)
	}
	ret, err := q.do("query-migrate", nil)
	if err != nil || !strings.Contains(string(ret), "completed") {
		t.Fatalf("query-migrate = %s, %v; want the answer after the event", ret, err)
	}
	if _, err := q.do("migrate", map[string]string{"uri": "exec:cat > f"}); err == nil || !strings.Contains(err.Error(), "no such thing") {
		t.Fatalf("migrate error = %v, want QEMU's error", err)
	}
}
