package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
)

// Canonical returns body, a JSON object, in a canonical form: members
// sorted by name at every depth, no whitespace, strings escaped one way,
// an integer as its literal and any other number as the shortest text
// of its float64, the value a backend reads; the top-level members skip
// names are left out. Two requests that differ only in member order,
// whitespace, escapes, the spelling of a number or skipped members have
// one canonical form; two that a backend reads differently never do.
func Canonical(body []byte, skip func(name string) bool) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return nil, err
	}
	if obj == nil {
		return nil, errors.New("cache: the request is not a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("cache: data after the request's JSON object")
	}
	for name := range obj {
		if skip != nil && skip(name) {
			delete(obj, name)
		}
	}
	if err := canonicalNumbers(obj); err != nil {
		return nil, err
	}
	return json.Marshal(obj) // maps marshal with their keys sorted
}

// canonicalNumbers rewrites the numbers within v in place.
func canonicalNumbers(v any) error {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if n, ok := e.(json.Number); ok {
				c, err := canonicalNumber(n)
				if err != nil {
					return err
				}
				v[k] = c
				continue
			}
			if err := canonicalNumbers(e); err != nil {
				return err
			}
		}
	case []any:
		for i, e := range v {
			if n, ok := e.(json.Number); ok {
				c, err := canonicalNumber(n)
				if err != nil {
					return err
				}
				v[i] = c
				continue
			}
			if err := canonicalNumbers(e); err != nil {
				return err
			}
		}
	}
	return nil
}

// canonicalNumber is n's canonical text: an integer literal as written
// (JSON allows one spelling of it, -0 aside), any other number as the
// shortest text of its float64.
func canonicalNumber(n json.Number) (json.Number, error) {
	s := string(n)
	if !strings.ContainsAny(s, ".eE") {
		if s == "-0" {
			return "0", nil
		}
		return n, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return "", err
	}
	if f == 0 {
		return "0", nil
	}
	return json.Number(strconv.FormatFloat(f, 'g', -1, 64)), nil
}
