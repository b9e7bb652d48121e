# Prints the public API of a UniFFI-generated Swift file, one declaration a
# line in file order: what an app can call, construct or implement. Doc
# comments, bodies and plumbing (FfiConverter types, handles, buffers, call
# helpers) are left out; a declaration spread over several lines is joined.
# Used by scripts/check-swift-bindings.sh for the golden API file.

# Removes /* ... */ comments (across lines) and // comments from `text`.
function strip_comments(text,    out, start, stop) {
  out = ""
  while (length(text) > 0) {
    if (in_comment) {
      stop = index(text, "*/")
      if (stop == 0) return out
      text = substr(text, stop + 2)
      in_comment = 0
    } else {
      start = index(text, "/*")
      if (start == 0) { out = out text; break }
      out = out substr(text, 1, start - 1)
      text = substr(text, start + 2)
      in_comment = 1
    }
  }
  sub(/\/\/.*$/, "", out)
  return out
}

function depth(text,    opened, closed) {
  opened = gsub(/\(/, "(", text)
  closed = gsub(/\)/, ")", text)
  return opened - closed
}

function emit(line) {
  if (line ~ /:[ \t]*$/) return                 # a `case` of a switch
  sub(/[ \t]*\{.*$/, "", line)                  # the body
  if (line ~ /FfiConverter|[Uu]niffi|RustBuffer|ForeignBytes|NoHandle|unsafeFromHandle|static func (lift|lower|read|write)\(/) return
  gsub(/[ \t]+/, " ", line)
  gsub(/\( /, "(", line)
  gsub(/ \)/, ")", line)
  sub(/ $/, "", line)
  sub(/^ /, "    ", line)
  print line
}

{
  line = strip_comments($0)
  if (pending != "") {
    pending = pending " " line
    if (depth(pending) <= 0 && pending !~ /^[ \t]*public[ \t]*$/) { emit(pending); pending = "" }
    next
  }
  if (line ~ /^(    )?(public|open|case |func |init\()/) {
    if (depth(line) > 0 || line ~ /^[ \t]*public[ \t]*$/) { pending = line; next }
    emit(line)
  }
}
