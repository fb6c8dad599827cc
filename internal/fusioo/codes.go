// Package fusioo holds what the gateway, its retry policy, its metrics and
// the simulator all know about the Fusioo API: the error codes of Fusioo's
// published table, the JSON envelope every response uses, and the route table
// that says which calls are charged, read-only or creates.
//
// It is a leaf package: it imports nothing from the rest of the module, so
// every other package may depend on it without creating a cycle.
package fusioo

import "strconv"

// Code is a Fusioo result code, as found in the "code" field of every
// response envelope. Codes are stable; messages are not, so the gateway
// matches on codes only.
type Code int

// The codes of Fusioo's error table (shared/fusioo-error-codes.txt).
const (
	CodeSuccess             Code = 10000
	CodeInternal            Code = 10001
	CodeNotFound            Code = 10002
	CodeUnauthorized        Code = 10003
	CodeUnavailable         Code = 10004
	CodeBadCredentials      Code = 20000
	CodeInvalidClientID     Code = 20001
	CodeBadClientSecret     Code = 20002
	CodeBadRedirectURI      Code = 20003
	CodeRefreshOtherClient  Code = 20004
	CodeRateLimited         Code = 20005
	CodeRefreshInvalid      Code = 20006
	CodeInvalidUser         Code = 20007
	CodeAppNotFound         Code = 30000
	CodeAppAccessDenied     Code = 30001
	CodeCannotCreate        Code = 30002
	CodeCannotUpdate        Code = 30003
	CodeCannotDelete        Code = 30004
	CodeValidation          Code = 30050
	CodeRecordNotFound      Code = 30051
	CodeRecordAccessDenied  Code = 30052
	CodeRecordLimit         Code = 30053
	CodeConcurrentRequests  Code = 30054
	CodeDiscussionNotFound  Code = 30056
	CodeContentRequired     Code = 30057
	CodeCharacterLimit      Code = 30058
	CodeSortFieldMissing    Code = 30100
	CodeSortFieldUnsortable Code = 30101
	CodeSortFieldDenied     Code = 30102
	CodeSortDirection       Code = 30103
	CodeOffsetInvalid       Code = 30104
	// CodeLimitInvalid is 30105. Fusioo's table also lists "User not found"
	// under 30105; the code is the same, so the gateway cannot tell them
	// apart and does not try.
	CodeLimitInvalid    Code = 30105
	CodeWebhookNotFound Code = 30200
	CodeFileNotFound    Code = 30250
	CodeFileType        Code = 30251
	CodeFileTooLarge    Code = 30252
	CodeStorageLimit    Code = 30253
	CodeMultipleFiles   Code = 30254
	CodeFileFieldDenied Code = 30256
)

// codeMessages is the table itself, in the order Fusioo publishes it.
var codeMessages = []struct {
	code Code
	msg  string
}{
	{CodeSuccess, "Success"},
	{CodeInternal, "Internal Server Error"},
	{CodeNotFound, "The requested resource was not found"},
	{CodeUnauthorized, "Unauthorized access"},
	{CodeUnavailable, "Service Unavailable"},
	{CodeBadCredentials, "Email or password are invalid"},
	{CodeInvalidClientID, "Invalid Client Id"},
	{CodeBadClientSecret, "Client Id or secret are invalid"},
	{CodeBadRedirectURI, "Redirect Uri is invalid"},
	{CodeRefreshOtherClient, "Refresh token is issued to a different Client Id"},
	{CodeRateLimited, "You have reached the hourly API rate limit"},
	{CodeRefreshInvalid, "Refresh token is invalid or expired"},
	{CodeInvalidUser, "Invalid user"},
	{CodeAppNotFound, "App not found"},
	{CodeAppAccessDenied, "App access denied"},
	{CodeCannotCreate, "Cannot create App records"},
	{CodeCannotUpdate, "Cannot update App records"},
	{CodeCannotDelete, "Cannot delete App records"},
	{CodeValidation, "Record validation errors"},
	{CodeRecordNotFound, "Record not found"},
	{CodeRecordAccessDenied, "Record access denied"},
	{CodeRecordLimit, "Record Limit exceeded"},
	{CodeConcurrentRequests, "Concurrent requests error"},
	{CodeDiscussionNotFound, "Discussion not found"},
	{CodeContentRequired, "Content is required"},
	{CodeCharacterLimit, "Character limit exceeded"},
	{CodeSortFieldMissing, "Field used to sort does not exist"},
	{CodeSortFieldUnsortable, "Field used is not sortable"},
	{CodeSortFieldDenied, "Cannot access the 'Sort By' Field"},
	{CodeSortDirection, "Sort direction is invalid"},
	{CodeOffsetInvalid, "Records offset is invalid"},
	{CodeLimitInvalid, "Records limit is invalid"},
	{CodeWebhookNotFound, "Webhook not found"},
	{CodeFileNotFound, "File not found"},
	{CodeFileType, "Invalid file type"},
	{CodeFileTooLarge, "File size limit exceeded"},
	{CodeStorageLimit, "Storage limit exceeded"},
	{CodeMultipleFiles, "Multiple files are not allowed"},
	{CodeFileFieldDenied, "File Field access denied"},
}

var known = func() map[Code]string {
	m := make(map[Code]string, len(codeMessages))
	for _, c := range codeMessages {
		m[c.code] = c.msg
	}
	return m
}()

// Codes returns every code of Fusioo's table, in table order. Metrics use it
// to pre-initialise a bounded label set.
func Codes() []Code {
	out := make([]Code, len(codeMessages))
	for i, c := range codeMessages {
		out[i] = c.code
	}
	return out
}

// Known reports whether c is in Fusioo's table.
func (c Code) Known() bool { _, ok := known[c]; return ok }

// Message returns the table's message for c, or "Error" for a code outside it.
func (c Code) Message() string {
	if m, ok := known[c]; ok {
		return m
	}
	return "Error"
}

// String returns the code as decimal digits.
func (c Code) String() string { return strconv.Itoa(int(c)) }

// Label returns the bounded metric label for c: its digits when it is in
// the table, "none" for 0 (no code could be read), "other" otherwise.
func (c Code) Label() string {
	switch {
	case c == 0:
		return "none"
	case c.Known():
		return c.String()
	default:
		return "other"
	}
}

// RateLimited reports whether an answer with this HTTP status and code was
// refused by Fusioo's rate limit (and so not applied). Which status comes
// with 20005 is undocumented, so either signal counts.
func RateLimited(status int, c Code) bool { return status == 429 || c == CodeRateLimited }

// Unavailable reports whether an answer means Fusioo is down or in
// maintenance (and so the request was not applied).
func Unavailable(status int, c Code) bool { return status == 503 || c == CodeUnavailable }
