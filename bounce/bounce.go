// Package bounce classifies SMTP failures into SparkPost's bounce classes.
//
// Contract: [Classify] maps a reply code (550), an enhanced status code
// ("5.1.1", RFC 3463) and the reply text to one [Class] — the number that
// bounce, delay, out_of_band and policy_rejection events carry as
// bounce_class — and [Class.Hard] says whether the recipient address should
// be treated as dead (classes 10, 30 and 90: what the suppression list adds
// automatically). [ClassifyReply] does the same from a reply line as the
// relay records it ("550 5.1.1 <a@b>: user unknown").
//
// The decision goes from the most to the least specific evidence:
//
//  1. the text, matched against phrases that receivers use for one cause
//     (blocklists, mailbox full, unknown user, relaying denied, ...), since
//     many servers send a generic enhanced code (5.0.0, 5.7.1) whatever the
//     cause;
//  2. the enhanced status code (RFC 3463 subject and detail);
//  3. the basic reply code: 5xx is a Generic Bounce (40), 4xx a Soft Bounce
//     (20).
//
// A temporary reply (4xx) never gets a hard class: a receiver saying "450
// user unknown" is asking to be asked again, so it is a Soft Bounce. Nothing
// to go on at all (no code, no text) is Undetermined (1).
package bounce

import (
	"strconv"
	"strings"
)

// Class is a SparkPost bounce class number.
type Class int

// SparkPost's bounce classes.
const (
	Undetermined         Class = 1
	InvalidRecipient     Class = 10
	SoftBounce           Class = 20
	DNSFailure           Class = 21
	MailboxFull          Class = 22
	TooLarge             Class = 23
	Timeout              Class = 24
	AdminFailure         Class = 25
	NoRCPT               Class = 30
	GenericBounce        Class = 40
	MailBlock            Class = 50
	SpamBlock            Class = 51
	SpamContent          Class = 52
	ProhibitedAttachment Class = 53
	RelayingDenied       Class = 54
	AutoReply            Class = 60
	TransientFailure     Class = 70
	Subscribe            Class = 80
	Unsubscribe          Class = 90
	ChallengeResponse    Class = 100
)

// Categories, as SparkPost groups its classes.
const (
	CategoryUndetermined = "Undetermined"
	CategoryHard         = "Hard"
	CategorySoft         = "Soft"
	CategoryBlock        = "Block"
	CategoryAdmin        = "Admin"
)

type info struct {
	name, category, description string
}

var classes = map[Class]info{
	Undetermined:         {"Undetermined", CategoryUndetermined, "The response text could not be identified."},
	InvalidRecipient:     {"Invalid Recipient", CategoryHard, "The recipient is invalid."},
	SoftBounce:           {"Soft Bounce", CategorySoft, "The message soft bounced."},
	DNSFailure:           {"DNS Failure", CategorySoft, "The message bounced due to a DNS failure."},
	MailboxFull:          {"Mailbox Full", CategorySoft, "The message bounced due to the remote mailbox being over quota."},
	TooLarge:             {"Too Large", CategorySoft, "The message bounced because it was too large for the recipient."},
	Timeout:              {"Timeout", CategorySoft, "The message timed out."},
	AdminFailure:         {"Admin Failure", CategoryAdmin, "The message was failed by the gateway's configured policies."},
	NoRCPT:               {"Generic Bounce: No RCPT", CategoryHard, "No recipient could be determined for the message."},
	GenericBounce:        {"Generic Bounce", CategorySoft, "The message failed for unspecified reasons."},
	MailBlock:            {"Mail Block", CategoryBlock, "The message was blocked by the receiver."},
	SpamBlock:            {"Spam Block", CategoryBlock, "The message was blocked by the receiver as coming from a known spam source."},
	SpamContent:          {"Spam Content", CategoryBlock, "The message was blocked by the receiver as spam."},
	ProhibitedAttachment: {"Prohibited Attachment", CategoryBlock, "The message was blocked by the receiver because it contained an attachment."},
	RelayingDenied:       {"Relaying Denied", CategoryBlock, "The message was blocked by the receiver because relaying is not allowed."},
	AutoReply:            {"Auto-Reply", CategorySoft, "The message is an auto-reply/vacation mail."},
	TransientFailure:     {"Transient Failure", CategorySoft, "Message transmission has been temporarily delayed."},
	Subscribe:            {"Subscribe", CategoryAdmin, "The message is a subscribe request."},
	Unsubscribe:          {"Unsubscribe", CategoryHard, "The message is an unsubscribe request."},
	ChallengeResponse:    {"Challenge-Response", CategorySoft, "The message is a challenge-response probe."},
}

// Classes lists every class in numeric order.
func Classes() []Class {
	return []Class{Undetermined, InvalidRecipient, SoftBounce, DNSFailure, MailboxFull, TooLarge, Timeout,
		AdminFailure, NoRCPT, GenericBounce, MailBlock, SpamBlock, SpamContent, ProhibitedAttachment,
		RelayingDenied, AutoReply, TransientFailure, Subscribe, Unsubscribe, ChallengeResponse}
}

// Valid reports whether c is one of SparkPost's classes.
func (c Class) Valid() bool { _, ok := classes[c]; return ok }

// Name is SparkPost's name for the class, e.g. "Invalid Recipient".
func (c Class) Name() string {
	if i, ok := classes[c]; ok {
		return i.name
	}
	return "Class " + strconv.Itoa(int(c))
}

// Category is "Hard", "Soft", "Block", "Admin" or "Undetermined".
func (c Class) Category() string { return classes[c].category }

// Description is a one-sentence explanation of the class.
func (c Class) Description() string { return classes[c].description }

// Hard reports whether the address itself is dead (classes 10, 30, 90):
// sending to it again is pointless, so the suppression list takes it.
func (c Class) Hard() bool {
	return c == InvalidRecipient || c == NoRCPT || c == Unsubscribe
}

func (c Class) String() string { return strconv.Itoa(int(c)) + " " + c.Name() }

// ClassifyReply classifies a reply line as recorded by the relay: "550 5.1.1
// text", "451 text" or free text (multi-line replies joined, with or without
// the "550-" continuation prefixes).
func ClassifyReply(reply string) Class {
	code, enh, text := ParseReply(reply)
	return Classify(code, enh, text)
}

// ParseReply splits a reply line into its code, enhanced code ("" if none)
// and text. A line that does not start with a three-digit code has code 0
// and is all text.
func ParseReply(reply string) (code int, enhanced, text string) {
	s := strings.TrimSpace(reply)
	if len(s) >= 3 && isDigits(s[:3]) && (len(s) == 3 || s[3] == ' ' || s[3] == '-') {
		code, _ = strconv.Atoi(s[:3])
		s = strings.TrimLeft(s[3:], " -")
	}
	if f, rest, _ := strings.Cut(s, " "); isEnhanced(f) {
		enhanced, s = f, rest
	} else if isEnhanced(s) {
		enhanced, s = s, ""
	}
	return code, enhanced, strings.TrimSpace(s)
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// isEnhanced reports whether s looks like an RFC 3463 code: class.subject.detail.
func isEnhanced(s string) bool {
	p := strings.Split(s, ".")
	if len(p) != 3 || (p[0] != "2" && p[0] != "4" && p[0] != "5") {
		return false
	}
	return isDigits(p[1]) && isDigits(p[2]) && len(p[1]) <= 3 && len(p[2]) <= 3
}

// Classify returns the bounce class of a failure from its reply code (0 if
// unknown), enhanced status code ("" if none) and text.
func Classify(code int, enhanced, text string) Class {
	if !isEnhanced(enhanced) {
		// Some servers put the enhanced code only in the text.
		if c, e, t := ParseReply(text); e != "" && (c == 0 || c == code) {
			enhanced, text = e, t
		} else {
			enhanced = ""
		}
	}
	temporary := code/100 == 4 || (code == 0 && strings.HasPrefix(enhanced, "4."))
	if strings.HasSuffix(enhanced, ".4.7") {
		// Delivery time expired: whatever the last reply said, the message
		// ran out of time.
		return Timeout
	}
	lower := strings.ToLower(text)
	if c, ok := byText(lower, temporary); ok {
		return c
	}
	if c, ok := byEnhanced(enhanced, temporary); ok {
		return c
	}
	switch {
	case code/100 == 5:
		return GenericBounce
	case code/100 == 4:
		return SoftBounce
	case code == 0 && strings.HasPrefix(enhanced, "5."):
		return GenericBounce
	}
	return Undetermined
}

// rule is one family of phrases naming a cause.
type rule struct {
	class Class
	// tempOnly: the phrases say "later" and mean nothing in a permanent
	// reply ("554 5.4.6 too many hops" is no rate limit).
	tempOnly bool
	phrases  []string
}

// rules are tried in order: more specific causes first (a Spamhaus listing
// often also says "blocked"; "mailbox full" often also says "mailbox").
var rules = []rule{
	{class: ChallengeResponse, phrases: []string{"challenge-response", "challenge response", "boxbe", "sender verification required", "verify that you are a human", "awaiting your verification"}},
	{class: AutoReply, phrases: []string{"out of office", "out of the office", "auto-reply", "autoreply", "automatic reply", "auto reply", "on vacation", "vacation reply", "away from the office"}},
	{class: Unsubscribe, phrases: []string{"unsubscribe request", "has unsubscribed", "unsubscribed from", "remove me from"}},
	{class: Subscribe, phrases: []string{"subscribe request", "subscription request", "confirm your subscription"}},
	{class: AdminFailure, phrases: []string{"suppression list", "suppressed recipient", "unconfigured sending domain", "gateway policy"}},
	// Transport failures before any reply: "connection refused" is not a block.
	{class: TransientFailure, phrases: []string{"connection refused", "connection reset", "broken pipe", "network is unreachable", "no route to host", "unexpected eof"}},
	{class: RelayingDenied, phrases: []string{"relay access denied", "relaying denied", "relay denied", "relay not permitted", "relaying not permitted", "unable to relay", "not allowed to relay", "relaying not allowed", "relay not allowed", "we do not relay", "not permitted to relay", "no relaying", "relaying disallowed", "relay prohibited", "relaying to"}},
	{class: SpamBlock, phrases: []string{
		"spamhaus", "spamcop", "sorbs", "barracuda", "uceprotect", "abuseat", "blocklist", "block list", "blacklist",
		"black list", "denylist", "dnsbl", "rbl", "realtime block", "listed at", "listed on", "listed in", "blocked using",
		"poor reputation", "ip reputation", "low reputation", "bad reputation", "reputation of",
		"banned sending ip", "rate of unsolicited", "[bl2", "[ts0", "[tss0", "[ts1",
		"your ip", "sending ip", "ip address has been", "because the ip is", "not accepted from", "user complaints"}},
	{class: ProhibitedAttachment, phrases: []string{"attachment", "executable", "virus", "malware", "infected", "potential security issue", "file type", "filename extension"}},
	{class: SpamContent, phrases: []string{"spam", "unsolicited", "junk mail", "content rejected", "message content", "content filter", "bulk mail", "phish", "suspicious", "score too high"}},
	{class: MailboxFull, phrases: []string{"mailbox full", "mailbox is full", "mail box full", "over quota", "overquota", "quota exceeded", "exceeded quota", "exceeds quota", "exceeded storage", "storage allocation", "insufficient storage", "out of storage", "disk quota", "mailbox size limit", "inbox is full", "its quota", "user is over", "full mailbox"}},
	{class: TooLarge, phrases: []string{"message too large", "message is too large", "message too big", "message size exceeds", "size exceeds", "exceeds size", "size limit", "message length exceeds", "too large", "too big"}},
	{class: InvalidRecipient, phrases: []string{
		"user unknown", "unknown user", "no such user", "unknown recipient", "recipient unknown", "invalid recipient",
		"recipient not found", "user not found", "no such recipient", "no such mailbox", "mailbox not found",
		"mailbox does not exist", "does not exist", "doesn't exist", "not exist", "mailbox unavailable", "mailbox is unavailable",
		"recipient address rejected", "not a valid mailbox", "invalid mailbox", "unrouteable address", "unroutable address",
		"no mailbox", "account disabled", "account is disabled", "account has been disabled", "disabled account",
		"mailbox disabled", "mailbox is disabled", "inactive", "deactivated", "no longer available", "no longer in use",
		"doesn't have a", "address not found", "unknown local part", "invalid address", "bad destination mailbox",
		"null mx", "does not accept mail", "no mail server", "domain not found", "domain name not found", "domain does not"}},
	{class: MailBlock, phrases: []string{"blocked", "block", "rejected due to", "policy", "denied", "not authorized", "unauthorized", "dmarc", "spf", "dkim", "unauthenticated", "authentication", "prohibited", "sender rejected", "sender address rejected", "reverse dns", "ptr record", "rdns", "cannot find your hostname", "client host rejected"}},
	{class: DNSFailure, phrases: []string{"dns", "name service", "host not found", "mx lookup", "address lookup", "lookup failed", "nxdomain", "servfail", "no mx", "resolv"}},
	{class: Timeout, phrases: []string{"timeout", "timed out", "time out", "expired"}},
	{class: TransientFailure, tempOnly: true, phrases: []string{"greylist", "graylist", "try again later", "try later", "please retry", "temporarily", "temporary", "deferred", "too busy", "rate limit", "throttl", "too many", "resources"}},
}

// byText matches the text against the rules. Matching is on lowercase
// phrases that start a word; the text is short (one reply), so a linear
// scan is cheap.
func byText(lower string, temporary bool) (Class, bool) {
	if lower == "" {
		return 0, false
	}
	for _, r := range rules {
		if r.tempOnly && !temporary {
			continue
		}
		for _, p := range r.phrases {
			if startsWord(lower, p) {
				if temporary && r.class.Hard() {
					return SoftBounce, true
				}
				return r.class, true
			}
		}
	}
	return 0, false
}

// startsWord reports whether p occurs in s at the start of a word, so "rbl"
// does not match "verbless" while "block" matches "blocked".
func startsWord(s, p string) bool {
	for i := 0; ; {
		j := strings.Index(s[i:], p)
		if j < 0 {
			return false
		}
		at := i + j
		if at == 0 || !isWordByte(s[at-1]) || !isWordByte(p[0]) {
			return true
		}
		i = at + 1
	}
}

func isWordByte(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '_'
}

// byEnhanced maps RFC 3463 subject.detail codes to a class.
func byEnhanced(enh string, temporary bool) (Class, bool) {
	if enh == "" {
		return 0, false
	}
	class := enh[0]
	sd := enh[2:]
	hard := func(c Class) (Class, bool) {
		if temporary || class == '4' {
			return SoftBounce, true
		}
		return c, true
	}
	switch sd {
	case "1.1", "1.0", "1.6", "2.1", "1.10":
		return hard(InvalidRecipient)
	case "1.2":
		// Bad destination system: the domain does not exist (5.1.2) or its
		// lookup failed for now (4.1.2).
		if class == '4' || temporary {
			return DNSFailure, true
		}
		return InvalidRecipient, true
	case "1.3":
		return hard(NoRCPT)
	case "1.4", "1.5":
		return GenericBounce, true
	case "1.7", "1.8":
		return MailBlock, true // bad sender address
	case "2.2":
		return MailboxFull, true
	case "2.3", "3.4":
		return TooLarge, true
	case "4.1", "4.2", "4.7":
		return Timeout, true
	case "4.3", "4.4":
		return DNSFailure, true
	case "4.6":
		return GenericBounce, true // routing loop
	case "7.1", "7.0", "7.2", "7.5", "7.7", "7.8", "7.9", "7.13", "7.14", "7.23", "7.24", "7.25", "7.26", "7.27":
		return MailBlock, true
	case "7.606", "7.511":
		return SpamBlock, true
	case "7.28":
		return SpamContent, true
	case "3.0", "3.1", "3.2", "3.5", "4.5", "2.0", "4.0", "0.0":
		if class == '4' || temporary {
			return TransientFailure, true
		}
		return GenericBounce, true
	}
	return 0, false
}
