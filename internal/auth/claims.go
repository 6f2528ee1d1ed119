package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// claims are the token claims the gateway acts on, read by one parser
// (parseClaims) so that every check sees the same values.
type claims struct {
	iss                          string
	aud                          []string
	exp, nbf                     time.Time // zero when absent
	hasExp, hasNbf               bool
	tid, oid, ver                string
	appid, azp                   string
	scp                          string
	roles, groups                []string
	upn, preferredUsername, name string
	// extra holds the string claims named in parseClaims' want list (the
	// app_claim of generic issuers), in the order they were seen.
	extra []claim
}

type claim struct{ name, value string }

func (c *claims) setDisplay(name, v string) {
	switch name {
	case "upn":
		c.upn = v
	case "preferred_username":
		c.preferredUsername = v
	default:
		c.name = v
	}
}

// get returns a string claim: one the gateway always reads, or one
// collected through parseClaims' want list.
func (c *claims) get(name string) string {
	switch name {
	case "iss":
		return c.iss
	case "tid":
		return c.tid
	case "oid":
		return c.oid
	case "ver":
		return c.ver
	case "appid":
		return c.appid
	case "azp":
		return c.azp
	case "scp":
		return c.scp
	}
	for _, kv := range c.extra {
		if kv.name == name {
			return kv.value
		}
	}
	return ""
}

// maxNumericDate is 9999-12-31T23:59:59Z: later exp/nbf values are refused
// as malformed rather than left to float-to-int conversion.
const maxNumericDate = 253402300799

// maxJSONDepth bounds nesting inside claims we skip; real tokens are flat.
const maxJSONDepth = 32

// parseClaims reads a JWT payload. It refuses what parsers disagree on:
// duplicate keys at any depth (encoding/json keeps the last, others the
// first), trailing data, a non-object payload, and claims of the wrong JSON
// type (exp as a string, aud as an object, ...). want lists extra top-level
// string claims to collect (generic issuers' app claims).
func parseClaims(payload []byte, want []string) (*claims, error) {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	if err := expectDelim(dec, '{'); err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	c := &claims{}
	seen := make(map[string]struct{}, 24)
	for dec.More() {
		name, err := objectKey(dec, seen)
		if err != nil {
			return nil, err
		}
		switch name {
		case "iss":
			c.iss, err = stringValue(dec, name)
		case "aud":
			c.aud, err = audienceValue(dec)
		case "exp":
			c.exp, err = dateValue(dec, name)
			c.hasExp = true
		case "nbf":
			c.nbf, err = dateValue(dec, name)
			c.hasNbf = true
		case "iat":
			_, err = dateValue(dec, name)
		case "tid":
			c.tid, err = stringValue(dec, name)
		case "oid":
			c.oid, err = stringValue(dec, name)
		case "ver":
			c.ver, err = stringValue(dec, name)
		case "appid":
			c.appid, err = stringValue(dec, name)
		case "azp":
			c.azp, err = stringValue(dec, name)
		case "scp":
			c.scp, err = stringValue(dec, name)
		case "roles":
			c.roles, err = stringsValue(dec, name)
		case "groups":
			c.groups, err = stringsValue(dec, name)
		case "upn", "preferred_username", "name":
			if wanted(want, name) { // an app claim: strictly a string
				var v string
				v, err = stringValue(dec, name)
				c.extra = append(c.extra, claim{name, v})
				c.setDisplay(name, v)
				break
			}
			// Display only: a non-string is ignored, not refused.
			var v json.Token
			if v, err = dec.Token(); err == nil {
				s, _ := v.(string)
				c.setDisplay(name, s)
				if d, ok := v.(json.Delim); ok {
					err = skipRest(dec, d, 1)
				}
			}
		default:
			if wanted(want, name) {
				var v string
				v, err = stringValue(dec, name)
				c.extra = append(c.extra, claim{name, v})
			} else {
				err = skipValue(dec, 0)
			}
		}
		if err != nil {
			return nil, err
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, fmt.Errorf("payload: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("payload: data after the JSON object")
	}
	return c, nil
}

func wanted(want []string, name string) bool {
	for _, w := range want {
		if w == name {
			return true
		}
	}
	return false
}

// header is the JOSE header fields the gateway checks.
type header struct {
	alg, kid string
	crit     bool
}

// parseHeader reads a JOSE header with the same strictness as parseClaims.
func parseHeader(b []byte) (header, error) {
	var h header
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := expectDelim(dec, '{'); err != nil {
		return h, fmt.Errorf("header: %w", err)
	}
	seen := make(map[string]struct{}, 8)
	for dec.More() {
		name, err := objectKey(dec, seen)
		if err != nil {
			return h, fmt.Errorf("header: %w", err)
		}
		switch name {
		case "alg":
			h.alg, err = stringValue(dec, name)
		case "kid":
			h.kid, err = stringValue(dec, name)
		case "crit":
			h.crit = true
			err = skipValue(dec, 0)
		default:
			err = skipValue(dec, 0)
		}
		if err != nil {
			return h, fmt.Errorf("header: %w", err)
		}
	}
	if _, err := dec.Token(); err != nil {
		return h, fmt.Errorf("header: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return h, errors.New("header: data after the JSON object")
	}
	return h, nil
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := t.(json.Delim); !ok || d != want {
		return fmt.Errorf("expected a JSON %s", map[json.Delim]string{'{': "object", '[': "array"}[want])
	}
	return nil
}

func objectKey(dec *json.Decoder, seen map[string]struct{}) (string, error) {
	t, err := dec.Token()
	if err != nil {
		return "", err
	}
	name, ok := t.(string)
	if !ok {
		return "", errors.New("object key is not a string")
	}
	if _, dup := seen[name]; dup {
		return "", fmt.Errorf("duplicate key %s", safeID(name))
	}
	seen[name] = struct{}{}
	return name, nil
}

func stringValue(dec *json.Decoder, name string) (string, error) {
	t, err := dec.Token()
	if err != nil {
		return "", err
	}
	s, ok := t.(string)
	if !ok {
		return "", fmt.Errorf("claim %s must be a string", name)
	}
	return s, nil
}

func stringsValue(dec *json.Decoder, name string) ([]string, error) {
	if err := expectDelim(dec, '['); err != nil {
		return nil, fmt.Errorf("claim %s: %w of strings", name, err)
	}
	var out []string
	for dec.More() {
		s, err := stringValue(dec, name)
		if err != nil {
			return nil, fmt.Errorf("claim %s must be an array of strings", name)
		}
		out = append(out, s)
	}
	_, err := dec.Token() // ']'
	return out, err
}

// audienceValue reads aud: a string or an array of strings (RFC 7519 4.1.3).
func audienceValue(dec *json.Decoder) ([]string, error) {
	t, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch v := t.(type) {
	case string:
		return []string{v}, nil
	case json.Delim:
		if v != '[' {
			break
		}
		out := []string{}
		for dec.More() {
			s, err := stringValue(dec, "aud")
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		}
		_, err := dec.Token()
		return out, err
	}
	return nil, errors.New("claim aud must be a string or an array of strings")
}

// dateValue reads a NumericDate: a JSON number (never a string) of seconds
// between 0 and year 9999.
func dateValue(dec *json.Decoder, name string) (time.Time, error) {
	t, err := dec.Token()
	if err != nil {
		return time.Time{}, err
	}
	n, ok := t.(json.Number)
	if !ok {
		return time.Time{}, fmt.Errorf("claim %s must be a number of seconds", name)
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil || math.IsNaN(f) || f < 0 || f > maxNumericDate {
		return time.Time{}, fmt.Errorf("claim %s is out of range", name)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC(), nil
}

// skipValue consumes one value, refusing duplicate keys in nested objects
// too and nesting deeper than maxJSONDepth.
func skipValue(dec *json.Decoder, depth int) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	switch v := t.(type) {
	case json.Delim:
		return skipRest(dec, v, depth+1)
	case json.Number:
		// A number no float64 can hold is refused, as encoding/json does.
		if _, err := v.Float64(); err != nil {
			return fmt.Errorf("number out of range: %w", err)
		}
	}
	return nil
}

// skipRest consumes the rest of the object or array opened by d.
func skipRest(dec *json.Decoder, d json.Delim, depth int) error {
	if depth > maxJSONDepth {
		return errors.New("JSON nested too deeply")
	}
	var seen map[string]struct{}
	if d == '{' {
		seen = map[string]struct{}{}
	}
	for dec.More() {
		if d == '{' {
			if _, err := objectKey(dec, seen); err != nil {
				return err
			}
		}
		if err := skipValue(dec, depth); err != nil {
			return err
		}
	}
	_, err := dec.Token()
	return err
}

// jwtClaims hands claims already read by parseClaims to jwt's validator
// (exp, nbf, iss). Its UnmarshalJSON deliberately does nothing: jwt decodes
// the very same payload bytes, and letting encoding/json read them a second
// time (case-insensitive field names, last duplicate wins) would give two
// views of one token.
type jwtClaims struct{ c *claims }

var _ jwt.Claims = (*jwtClaims)(nil)

func (*jwtClaims) UnmarshalJSON([]byte) error { return nil }

func (j *jwtClaims) GetExpirationTime() (*jwt.NumericDate, error) {
	if !j.c.hasExp {
		return nil, nil
	}
	return jwt.NewNumericDate(j.c.exp), nil
}

func (j *jwtClaims) GetNotBefore() (*jwt.NumericDate, error) {
	if !j.c.hasNbf {
		return nil, nil
	}
	return jwt.NewNumericDate(j.c.nbf), nil
}

func (*jwtClaims) GetIssuedAt() (*jwt.NumericDate, error) { return nil, nil }
func (j *jwtClaims) GetIssuer() (string, error)           { return j.c.iss, nil }
func (*jwtClaims) GetSubject() (string, error)            { return "", nil }
func (j *jwtClaims) GetAudience() (jwt.ClaimStrings, error) {
	return jwt.ClaimStrings(j.c.aud), nil
}
