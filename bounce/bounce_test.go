package bounce

import "testing"

// Real-world replies, as receivers send them (addresses and IPs changed).
var cases = []struct {
	name  string
	reply string
	want  Class
}{
	// Invalid recipients.
	{"gmail no such user", "550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser d2si123456qkb.12 - gsmtp", InvalidRecipient},
	{"outlook recipient not found", "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302)", InvalidRecipient},
	{"office365 resolver", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", InvalidRecipient},
	{"office365 ext", "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) [DB5EUR03FT012.eop-EUR03.prod.protection.outlook.com]", InvalidRecipient},
	{"yahoo no account", "554 delivery error: dd This user doesn't have a yahoo.com account (bob@yahoo.com) [0] - mta1234.mail.gq1.yahoo.com", InvalidRecipient},
	{"yahoo disabled", "554 delivery error: dd Sorry your message to bob@yahoo.com cannot be delivered. This mailbox is disabled (554.30). - mta1010.mail.bf1.yahoo.com", InvalidRecipient},
	{"postfix local table", "550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown in local recipient table", InvalidRecipient},
	{"postfix virtual", "550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown in virtual mailbox table", InvalidRecipient},
	{"exim unrouteable", "550 Unrouteable address", InvalidRecipient},
	{"exim no such user", "550 No Such User Here", InvalidRecipient},
	{"enhanced only", "550 5.1.1", InvalidRecipient},
	{"null mx (relay)", "556 5.1.10 recipient domain does not accept mail (null MX)", InvalidRecipient},
	{"no domain (relay)", "550 5.1.2 recipient domain has no mail server", InvalidRecipient},
	{"icloud", "550 5.1.1 <bob@icloud.com>: user does not exist", InvalidRecipient},

	// Temporary forms of hard causes stay soft.
	{"postfix 450 user unknown", "450 4.1.1 <bob@example.com>: Recipient address rejected: User unknown in local recipient table", SoftBounce},
	{"4.2.1 disabled for now", "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered", SoftBounce},

	// Mailbox full.
	{"gmail over quota", "552-5.2.2 The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaPerm", MailboxFull},
	{"gmail over quota temp", "452 4.2.2 The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp", MailboxFull},
	{"dovecot quota", "552 5.2.2 <bob@example.com> Quota exceeded (mailbox for user is full)", MailboxFull},
	{"exim mailbox full", "550 mailbox full", MailboxFull},
	{"enhanced 5.2.2 only", "552 5.2.2", MailboxFull},

	// Too large.
	{"gmail size", "552-5.3.4 Your message exceeded Google's message size limits. Please visit https://support.google.com/mail/?p=MaxSizeError to view our size guidelines.", TooLarge},
	{"postfix size", "552 5.3.4 Message size exceeds fixed limit", TooLarge},
	{"exim too big", "552 Message size exceeds maximum permitted", TooLarge},

	// Spam blocks (the sender's IP or domain).
	{"spamhaus postfix", "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.1", SpamBlock},
	{"outlook banned ip", "550 5.7.606 Access denied, banned sending IP [192.0.2.1]. To request removal from this list please visit https://sender.office.com/", SpamBlock},
	{"outlook S3150", "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).", SpamBlock},
	{"yahoo TSS04", "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", SpamBlock},
	{"yahoo BL21", "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the ip is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes", SpamBlock},
	{"gmail rate of unsolicited", "421-4.7.28 [192.0.2.1] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.", SpamBlock},
	{"gmail domain reputation", "550-5.7.1 This message has been blocked because it is likely suspicious due to the very low reputation of the sending domain.", SpamBlock},
	{"barracuda", "554 Service unavailable; Client host [192.0.2.1] blocked using Barracuda Reputation", SpamBlock},

	// Spam content.
	{"gmail unsolicited", "550-5.7.1 [192.0.2.1] Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked.", SpamContent},
	{"spamassassin", "550 5.7.1 Message rejected as spam by Content Filtering.", SpamContent},
	{"mimecast", "554 Message rejected: Content filter rejection", SpamContent},

	// Attachments.
	{"gmail security", "552-5.7.0 This message was blocked because its content presents a potential security issue. Please visit https://support.google.com/mail/?p=BlockedMessage", ProhibitedAttachment},
	{"exim virus", "550 This message contains a virus (Eicar-Test-Signature)", ProhibitedAttachment},
	{"exe", "554 5.7.1 Executable attachments are not allowed", ProhibitedAttachment},

	// Relaying.
	{"postfix relay", "554 5.7.1 <bob@elsewhere.example>: Relay access denied", RelayingDenied},
	{"exchange relay", "550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain", RelayingDenied},
	{"exim relay", "550 relay not permitted", RelayingDenied},

	// Mail blocks (policy, authentication).
	{"gmail dmarc", "550-5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy. Please contact the administrator of example.com domain.", MailBlock},
	{"gmail 5.7.26 auth", "550-5.7.26 This mail is unauthenticated, which poses a security risk to the sender and Gmail users, and has been blocked.", MailBlock},
	{"postfix rdns", "450 4.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]", MailBlock},
	{"sender rejected", "553 5.7.1 <x@example.com>: Sender address rejected: not owned by user bob", MailBlock},
	{"enhanced 5.7.1 no text", "550 5.7.1", MailBlock},

	// DNS.
	{"relay mx lookup", "451 4.4.3 MX lookup for example.com failed", DNSFailure},
	{"relay address lookup", "451 4.4.3 address lookup for example.com failed", DNSFailure},
	{"postfix host not found", "450 4.1.2 <bob@nonexistent.example>: Recipient address rejected: Domain not found", SoftBounce},
	{"temporary 4.1.2", "451 4.1.2 temporary failure resolving example.com", DNSFailure},

	// Timeouts and expiry.
	{"relay timeout", "451 4.4.2 timeout talking to remote server", Timeout},
	{"expiry", "554 5.4.7 message expired after 72h0m0s in queue; last reply: 550 5.7.1 blocked using zen.spamhaus.org", Timeout},
	{"connection timed out", "451 4.4.1 dial tcp 192.0.2.1:25: i/o timeout", Timeout},

	// Transient.
	{"greylisting postfix", "450 4.2.0 <bob@example.com>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.com.html", SoftBounce},
	{"greylisting exim", "451 Greylisted, please try again later", TransientFailure},
	{"connection refused", "451 4.4.1 dial tcp 192.0.2.1:25: connect: connection refused", TransientFailure},
	{"gmail try later", "421-4.3.0 Temporary System Problem. Try again later (10). - gsmtp", TransientFailure},
	{"too many recipients", "452 4.5.3 Too many recipients", TransientFailure},
	{"local failure", "451 4.3.0 local error, will retry", TransientFailure},
	{"generic 4xx", "421 Service not available", SoftBounce},

	// Generic.
	{"generic 5xx", "554 Transaction failed", GenericBounce},
	{"generic 5.0.0", "550 5.0.0 Rejected", GenericBounce},
	{"no rcpt syntax", "553 5.1.3 Bad recipient address syntax", NoRCPT},
	{"routing loop", "554 5.4.6 Too many hops", GenericBounce},

	// Out-of-band and local.
	{"auto reply", "Automatic reply: Out of Office until Monday", AutoReply},
	{"challenge", "Please verify that you are a human by clicking this link (Boxbe)", ChallengeResponse},
	{"unsubscribe", "Unsubscribe request for list news@example.com", Unsubscribe},
	{"subscribe", "Subscribe request for list news@example.com", Subscribe},
	{"suppression", "550 5.7.1 Recipient is on the suppression list", AdminFailure},
	{"unconfigured domain", "550 5.7.1 Unconfigured Sending Domain <example.com>", AdminFailure},
	{"nothing", "", Undetermined},
	{"gibberish", "something odd happened", Undetermined},
}

func TestClassifyReply(t *testing.T) {
	for _, c := range cases {
		if got := ClassifyReply(c.reply); got != c.want {
			t.Errorf("%s: ClassifyReply(%q) = %v, want %v", c.name, c.reply, got, c.want)
		}
	}
}

func TestClassifyParts(t *testing.T) {
	tests := []struct {
		code int
		enh  string
		text string
		want Class
	}{
		{550, "5.1.1", "user unknown", InvalidRecipient},
		{550, "", "5.1.1 <a@b>: user unknown", InvalidRecipient}, // enhanced code inside the text
		{450, "4.1.1", "user unknown", SoftBounce},
		{0, "", "", Undetermined},
		{0, "5.2.2", "", MailboxFull},
		{421, "", "", SoftBounce},
		{550, "", "", GenericBounce},
		{550, "9.9.9", "", GenericBounce}, // not an enhanced code
	}
	for _, tt := range tests {
		if got := Classify(tt.code, tt.enh, tt.text); got != tt.want {
			t.Errorf("Classify(%d, %q, %q) = %v, want %v", tt.code, tt.enh, tt.text, got, tt.want)
		}
	}
}

func TestParseReply(t *testing.T) {
	tests := []struct {
		in        string
		code      int
		enh, text string
	}{
		{"550 5.1.1 user unknown", 550, "5.1.1", "user unknown"},
		{"552-5.2.2 over quota", 552, "5.2.2", "over quota"},
		{"421 Service not available", 421, "", "Service not available"},
		{"550 5.1.1", 550, "5.1.1", ""},
		{"free text", 0, "", "free text"},
		{"5501 not a code", 0, "", "5501 not a code"},
	}
	for _, tt := range tests {
		code, enh, text := ParseReply(tt.in)
		if code != tt.code || enh != tt.enh || text != tt.text {
			t.Errorf("ParseReply(%q) = %d %q %q, want %d %q %q", tt.in, code, enh, text, tt.code, tt.enh, tt.text)
		}
	}
}

func TestClasses(t *testing.T) {
	hard := map[Class]bool{InvalidRecipient: true, NoRCPT: true, Unsubscribe: true}
	want := []int{1, 10, 20, 21, 22, 23, 24, 25, 30, 40, 50, 51, 52, 53, 54, 60, 70, 80, 90, 100}
	all := Classes()
	if len(all) != len(want) {
		t.Fatalf("Classes() has %d classes, want %d", len(all), len(want))
	}
	for i, c := range all {
		if int(c) != want[i] {
			t.Errorf("Classes()[%d] = %d, want %d", i, c, want[i])
		}
		if !c.Valid() || c.Name() == "" || c.Category() == "" || c.Description() == "" {
			t.Errorf("class %d lacks a name, category or description", c)
		}
		if c.Hard() != hard[c] {
			t.Errorf("class %d Hard() = %v", c, c.Hard())
		}
		if hard[c] != (c.Category() == CategoryHard) {
			t.Errorf("class %d: category %q disagrees with Hard()", c, c.Category())
		}
	}
	if Class(30).Name() != "Generic Bounce: No RCPT" || Class(54).Name() != "Relaying Denied" {
		t.Errorf("names: %q, %q", Class(30).Name(), Class(54).Name())
	}
	if Class(7).Valid() {
		t.Error("class 7 is not one of SparkPost's")
	}
}

func BenchmarkClassifyReply(b *testing.B) {
	for i := 0; i < b.N; i++ {
		ClassifyReply(cases[i%len(cases)].reply)
	}
}
