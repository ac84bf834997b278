package smtpd

import (
	"errors"
	"strconv"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// subaccountSuffix introduces the subaccount in a SparkPost SMTP username:
// "SMTP_Injection:X-MSYS-SUBACCOUNT=123".
const subaccountSuffix = ":x-msys-subaccount="

// errBadUsername: the username is not one of smtp.auth_usernames, or its
// subaccount part is malformed.
var errBadUsername = errors.New("username not accepted")

// parseUsername splits an AUTH username into its base name and the
// subaccount it asks for (-1: none). The base must be one of allowed
// (lowercased; nil allows any), compared without regard to case.
func parseUsername(username string, allowed []string) (sub int64, err error) {
	base, subPart := username, ""
	if i := strings.Index(strings.ToLower(username), subaccountSuffix); i >= 0 {
		base, subPart = username[:i], username[i+len(subaccountSuffix):]
	}
	if base == "" {
		return 0, errBadUsername
	}
	if allowed != nil {
		ok := false
		for _, a := range allowed {
			if strings.EqualFold(base, a) {
				ok = true
				break
			}
		}
		if !ok {
			return 0, errBadUsername
		}
	}
	if i := strings.Index(strings.ToLower(username), subaccountSuffix); i < 0 {
		return -1, nil
	}
	n, err := strconv.ParseInt(subPart, 10, 64)
	if err != nil || n < 0 || subPart[0] == '+' {
		return 0, errBadUsername
	}
	return n, nil
}

// authenticator checks a username and password; it returns nil or a
// *smtp.SMTPError (see session.authenticate).
type authenticator func(username, password string) error

// newPlainServer is PLAIN (RFC 4616). An authorization identity other
// than the username is refused: keys do not act for others.
func newPlainServer(check authenticator) sasl.Server {
	return saslReplies{sasl.NewPlainServer(func(identity, username, password string) error {
		if identity != "" && identity != username {
			return check("", "")
		}
		return check(username, password)
	})}
}

// loginServer is the obsolete but widespread LOGIN mechanism
// (draft-murchison-sasl-login): challenges "Username:" and "Password:",
// the username possibly sent as the initial response.
type loginServer struct {
	check    authenticator
	state    int // 0: want username, 1: want password, 2: done
	username string
}

func newLoginServer(check authenticator) sasl.Server {
	return saslReplies{&loginServer{check: check}}
}

// Next implements sasl.Server.
func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.state {
	case 0:
		if response == nil {
			return []byte("Username:"), false, nil
		}
		l.username = string(response)
		l.state = 1
		return []byte("Password:"), false, nil
	case 1:
		l.state = 2
		return nil, true, l.check(l.username, string(response))
	default:
		return nil, true, sasl.ErrUnexpectedClientResponse
	}
}

// saslReplies makes sure only *smtp.SMTPError values reach go-smtp, which
// would otherwise answer "454 4.7.0 " + err.Error().
type saslReplies struct{ sasl.Server }

// Next implements sasl.Server.
func (s saslReplies) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := s.Server.Next(response)
	if err != nil {
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			return nil, true, ErrMalformedAuth
		}
		return nil, true, se
	}
	return challenge, done, nil
}
