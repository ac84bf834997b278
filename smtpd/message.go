package smtpd

import (
	"bufio"
	"bytes"
	"fmt"
	"mime"
	"net/mail"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-message/charset"
	"github.com/emersion/go-message/textproto"
)

// traceInfo is what the Received: field records (RFC 5321 §4.4).
type traceInfo struct {
	helo      string     // EHLO argument
	ip        netip.Addr // client address
	hostname  string     // our name
	protocol  string     // RFC 3848 / RFC 6531 "with" keyword, e.g. ESMTPSA
	tls       string     // e.g. "TLS1.3 TLS_AES_128_GCM_SHA256"; "" without TLS
	id        string     // queue id
	recipient string     // the single recipient, or ""
	now       time.Time
}

// prepared is the header of a message ready to enqueue.
type prepared struct {
	header     []byte   // stored header block: our fields added, CRLF line ends, ending with the empty line
	msys       *MsysAPI // nil: no X-MSYS-API header
	fromDomain string   // domain of the From: header's first address; "" if none
	fromAddr   string   // the From: header's first address; "" if none
	subject    string   // the Subject: header, RFC 2047 words decoded
}

// headerReaders are the readers prepareHeader parses headers with: a new
// one was a 4 KiB buffer per message, and textproto.ReadHeader copies what
// it keeps out of it.
var headerReaders = sync.Pool{New: func() any { return bufio.NewReader(nil) }}

// prepareHeader turns a message's header block as received (line ends
// already CRLF) into the stored form: parsed losslessly (textproto keeps
// every field's raw bytes), X-MSYS-API parsed and removed, Message-ID: and
// Date: added when missing (RFC 6409 §8.2, §8.3) and Received: prepended.
// More than maxReceived Received: fields is a mail loop. The body is not
// touched: the caller puts the new header in front of it.
func prepareHeader(hdr []byte, tr traceInfo, maxReceived int) (*prepared, error) {
	br := headerReaders.Get().(*bufio.Reader)
	br.Reset(bytes.NewReader(hdr))
	h, err := textproto.ReadHeader(br)
	br.Reset(nil)
	headerReaders.Put(br)
	if err != nil {
		return nil, fmt.Errorf("read message header: %w: %w", ErrMalformedMessage, err)
	}
	if n := len(h.Values("Received")); n > maxReceived {
		return nil, fmt.Errorf("%d Received: fields, more than %d: %w", n, maxReceived, ErrTooManyHops)
	}

	p := &prepared{}
	switch vals := h.Values(MsysAPIHeader); len(vals) {
	case 0:
	case 1:
		if p.msys, err = ParseMsysAPI(vals[0]); err != nil {
			return nil, err
		}
		h.Del(MsysAPIHeader)
		if len(p.msys.Recipients()) > 0 {
			// Naming one recipient of several would reveal it to the
			// others (RFC 5321 §7.2).
			tr.recipient = ""
		}
	default:
		return nil, msysErrorf("more than one X-MSYS-API header")
	}
	p.fromAddr = fromAddress(h.Get("From"))
	p.fromDomain = domainOfFrom(p.fromAddr)
	p.subject = decodeSubject(h.Get("Subject"))

	if !h.Has("Date") {
		h.Add("Date", tr.now.Format(time.RFC1123Z))
	}
	if !h.Has("Message-Id") {
		// AddRaw keeps the customary spelling "Message-ID".
		h.AddRaw([]byte("Message-ID: <" + tr.id + "@" + sanitizeTrace(tr.hostname) + ">\r\n"))
	}

	// Received: goes first (RFC 5321 §4.4), written ahead of the rest.
	var b bytes.Buffer
	b.Grow(len(hdr) + 512)
	b.Write(appendReceived(b.AvailableBuffer(), tr))
	if err := textproto.WriteHeader(&b, h); err != nil {
		return nil, fmt.Errorf("write message header: %w: %w", ErrMalformedMessage, err)
	}
	p.header = b.Bytes()
	return p, nil
}

// appendReceived appends the Received: field, folded so that no line passes 78
// characters for ordinary names:
//
//	Received: from client.example ([192.0.2.7])
//		by gw.example (smtpgw) with ESMTPSA id 0123
//		(TLS1.3 TLS_AES_128_GCM_SHA256)
//		for <rcpt@example.com>; Mon, 02 Jan 2006 15:04:05 +0000
func appendReceived(b []byte, tr traceInfo) []byte {
	b = append(b, "Received: from "...)
	b = append(b, sanitizeTrace(tr.helo)...)
	b = append(b, " ("...)
	if tr.ip.Is6() {
		b = append(b, "[IPv6:"...)
	} else {
		b = append(b, '[')
	}
	if tr.ip.IsValid() {
		b = tr.ip.AppendTo(b)
	} else {
		b = append(b, tr.ip.String()...) // as fmt would print it
	}
	b = append(b, "])\r\n\tby "...)
	b = append(b, sanitizeTrace(tr.hostname)...)
	b = append(b, " (smtpgw) with "...)
	b = append(b, tr.protocol...)
	b = append(b, " id "...)
	b = append(b, tr.id...)
	b = append(b, "\r\n"...)
	if tr.tls != "" {
		b = append(b, "\t("...)
		b = append(b, tr.tls...)
		b = append(b, ")\r\n"...)
	}
	if tr.recipient != "" {
		b = append(b, "\tfor <"...)
		b = append(b, sanitizeTrace(tr.recipient)...)
		b = append(b, ">;"...)
	} else {
		b = append(b, "\t;"...)
	}
	b = append(b, ' ')
	b = tr.now.AppendFormat(b, time.RFC1123Z)
	return append(b, "\r\n"...)
}

// maxTraceName is the longest name written into Received: (a domain name
// has at most 253 characters); longer client text is cut.
const maxTraceName = 255

// sanitizeTrace keeps client-chosen text (the EHLO name) from breaking the
// header: only printable ASCII other than parentheses and angle brackets
// survive (non-ASCII of an SMTPUTF8 address is kept), and at most
// maxTraceName bytes of it.
func sanitizeTrace(s string) string {
	if s == "" {
		return "unknown"
	}
	if len(s) > maxTraceName {
		s = strings.ToValidUTF8(s[:maxTraceName], "")
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r == '(' || r == ')' || r == '<' || r == '>' || r == ';':
			return '_'
		case r < '!' || r == 0x7f:
			return '_'
		}
		return r
	}, s)
}

// fromAddress returns the first address of a From: header value, "" if
// it has none that parses.
func fromAddress(v string) string {
	if v == "" {
		return ""
	}
	list, err := mail.ParseAddressList(v)
	if err != nil || len(list) == 0 {
		return ""
	}
	return list[0].Address
}

// maxSubject bounds the subject events keep (SparkPost's events carry it
// whole; a megabyte-long one would bloat every event row).
const maxSubject = 998

// decodeSubject decodes RFC 2047 encoded words of a Subject: value; one
// that does not decode is kept as received. It is cut at maxSubject bytes.
func decodeSubject(v string) string {
	if d, err := subjectDecoder.DecodeHeader(v); err == nil {
		v = d
	}
	v = strings.TrimSpace(v)
	if len(v) > maxSubject {
		v = strings.ToValidUTF8(v[:maxSubject], "")
	}
	return v
}

var subjectDecoder = &mime.WordDecoder{CharsetReader: charset.Reader}

// domainOfFrom returns the lowercased domain of address a.
func domainOfFrom(a string) string {
	at := strings.LastIndexByte(a, '@')
	if at < 0 {
		return ""
	}
	return strings.ToLower(a[at+1:])
}
