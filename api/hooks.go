package api

import (
	"errors"
	"fmt"
	"strings"
)

// PUT /logger and PUT /metrics configure the process, not the VMM: the
// server validates them and hands them to the Options hooks, at most once
// each, whether through the API or Server.ApplyConfigFile.

// validLogLevel reports whether level is one Firecracker accepts (any
// case).
func validLogLevel(level string) bool {
	switch strings.ToLower(level) {
	case "error", "warning", "warn", "info", "debug", "trace", "off":
		return true
	}
	return false
}

func (s *Server) putLogger(c *call) (any, error) {
	l, err := decodeModel[Logger](c.body)
	if err != nil {
		return nil, err
	}
	if err := s.notStarted(); err != nil {
		return nil, err
	}
	return nil, s.configureLogger(l)
}

// configureLogger runs the logger hook, once.
func (s *Server) configureLogger(l Logger) error {
	if l.Level != nil && !validLogLevel(*l.Level) {
		return fmt.Errorf("logger: level %q: want Error, Warning, Info, Debug, Trace or Off", *l.Level)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.logger != nil:
		return errors.New("Reinitialization of logger not allowed.")
	case s.opts.ConfigureLogger == nil:
		return notSupported("this process has no logger to configure")
	}
	if err := s.opts.ConfigureLogger(l); err != nil {
		return fmt.Errorf("logger: %w", err)
	}
	s.logger = &l
	return nil
}

func (s *Server) putMetrics(c *call) (any, error) {
	m, err := decodeModel[Metrics](c.body)
	if err != nil {
		return nil, err
	}
	if err := s.notStarted(); err != nil {
		return nil, err
	}
	return nil, s.configureMetrics(m)
}

// configureMetrics runs the metrics hook, once.
func (s *Server) configureMetrics(m Metrics) error {
	if m.MetricsPath == "" {
		return errors.New("metrics: metrics_path is empty")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.metrics != nil:
		return errors.New("Reinitialization of metrics not allowed.")
	case s.opts.ConfigureMetrics == nil:
		return notSupported("this process has no metrics to configure")
	}
	if err := s.opts.ConfigureMetrics(m); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	s.metrics = &m
	return nil
}
