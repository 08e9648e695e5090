package rusage

import "testing"

func TestParseReport(t *testing.T) {
	for _, bad := range []string{"", "1 2", "x y z", "-1 2 3", "1 -2 3", "1 2 -3"} {
		if _, err := ParseReport([]byte(bad)); err == nil {
			t.Errorf("report %q parsed", bad)
		}
	}
	r, err := ParseReport([]byte("1500 7000 2100\n"))
	if err != nil || r.PeakKiB != 7000 || r.FloorKiB != 2100 || r.Wall != 1500 {
		t.Errorf("got %+v, %v", r, err)
	}
}
