package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/agent/client"
	"github.com/embervm/ember/agent/proto"
)

// subreaperEnv makes the test binary an agent that reaps orphans, as PID 1
// does (PR_SET_CHILD_SUBREAPER gives a process PID 1's role for its
// descendants), serving on the socket the variable names.
const subreaperEnv = "EMBER_AGENT_TEST_SUBREAPER_SOCK"

func TestMain(m *testing.M) {
	if sock := os.Getenv(subreaperEnv); sock != "" {
		os.Exit(subreaperAgent(sock))
	}
	os.Exit(m.Run())
}

func subreaperAgent(sock string) int {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { // ends when the test closes our stdin
		var b [1]byte
		os.Stdin.Read(b[:])
		cancel()
	}()
	srv := New(Config{ReapOrphans: true, RunDir: filepath.Join(filepath.Dir(sock), "run"), ResolvConf: os.DevNull,
		Env: []string{"PATH=" + os.Getenv("PATH")}})
	if err := srv.Serve(ctx, unixListener{l}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// As PID 1 the agent reaps every orphan the machine hands it, not only
// the processes it started: no zombie is left.
func TestReapsOrphans(t *testing.T) {
	needRoot(t)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), subreaperEnv+"="+sock)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	var conn net.Conn
	for deadline := time.Now().Add(30 * time.Second); ; {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not come up: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c, err := client.New(context.Background(), conn, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p, err := c.Start(context.Background(), proto.ExecStart{Args: sh("sleep 1 & echo $!")})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if st, err := p.Copy(context.Background(), &out, &out); err != nil || st.Code != 0 {
		t.Fatalf("%+v %v", st, err)
	}
	var orphan int
	fmt.Sscanf(out.String(), "%d", &orphan)
	// The shell is gone; its child now belongs to the agent.
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", orphan)); err == nil {
		if !strings.Contains(string(b), fmt.Sprintf("\nPPid:\t%d\n", cmd.Process.Pid)) {
			t.Errorf("the orphan's parent is not the agent:\n%s", b)
		}
	}
	// Once it exits the agent reaps it: not even a zombie remains.
	for deadline := time.Now().Add(30 * time.Second); ; {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", orphan)); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d was never reaped", orphan)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
