-- dr2studio: import new takes from the project's dr2studio.json into REAPER.
--
-- Install: Actions > Show action list > New action > Load ReaScript... (this file). Copy its
-- command id (right-click > Copy selected action command ID, e.g. _RS1234abcd...) and start the bridge
-- with `dr2studio bridge --reaper-osc 127.0.0.1:8000 --reaper-action _RS1234abcd...`: after each take
-- the bridge sends /action/_RS1234abcd... to REAPER's OSC surface, which runs this action (docs/reaper.md).
--
-- What it does: reads <project folder>/dr2studio.json (written by `dr2studio bridge` and
-- `dr2studio stems`), and for every take not imported before (remembered in the project's
-- ExtState) puts each stem file on the track "dr2 <stem>" at the take's position_seconds, each take
-- on a new fixed item lane of that track (REAPER 7 "fixed item lanes": I_FREEMODE 2), the lane named
-- after the take. The new lane plays; older lanes that overlap it stop playing (the newest version of
-- that part wins; other parts keep playing). MIDI files of the take (manifest "midi": {stem: file})
-- go the same way onto "dr2 <stem> MIDI" tracks.
-- Before anything of a take is placed, every file of it is opened; if REAPER cannot read one, the
-- action prints what and where in the ReaScript console, places nothing of that take and does not
-- mark it imported (run the action again once the file is fixed).
-- Nothing is copied: the files already live in the project's media folder.

local SECTION = "dr2studio"

-- ------------------------------------------------------------------ minimal JSON decoder
local function json_decode(text)
  local pos = 1
  local function err(msg) error(("dr2studio.json: %s at byte %d"):format(msg, pos)) end
  local function ws() pos = text:find("[^ \t\r\n]", pos) or #text + 1 end
  local value
  local function str()
    pos = pos + 1
    local out = {}
    while true do
      local c = text:sub(pos, pos)
      if c == "" then err("unterminated string") end
      if c == '"' then pos = pos + 1; return table.concat(out) end
      if c == "\\" then
        local e = text:sub(pos + 1, pos + 1)
        local map = { b = "\b", f = "\f", n = "\n", r = "\r", t = "\t", ['"'] = '"', ["\\"] = "\\", ["/"] = "/" }
        if e == "u" then
          local cp = tonumber(text:sub(pos + 2, pos + 5), 16) or err("bad \\u escape")
          if cp >= 0xD800 and cp <= 0xDBFF and text:sub(pos + 6, pos + 7) == "\\u" then
            local lo = tonumber(text:sub(pos + 8, pos + 11), 16) or err("bad surrogate")
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
            pos = pos + 6
          end
          out[#out + 1] = utf8.char(cp)
          pos = pos + 6
        else
          out[#out + 1] = map[e] or err("bad escape")
          pos = pos + 2
        end
      else
        out[#out + 1] = c
        pos = pos + 1
      end
    end
  end
  function value()
    ws()
    local c = text:sub(pos, pos)
    if c == "{" then
      local obj = {}
      pos = pos + 1; ws()
      if text:sub(pos, pos) == "}" then pos = pos + 1; return obj end
      while true do
        ws()
        if text:sub(pos, pos) ~= '"' then err("expected a key") end
        local k = str(); ws()
        if text:sub(pos, pos) ~= ":" then err("expected ':'") end
        pos = pos + 1
        obj[k] = value(); ws()
        local d = text:sub(pos, pos); pos = pos + 1
        if d == "}" then return obj elseif d ~= "," then err("expected ',' or '}'") end
      end
    elseif c == "[" then
      local arr = {}
      pos = pos + 1; ws()
      if text:sub(pos, pos) == "]" then pos = pos + 1; return arr end
      while true do
        arr[#arr + 1] = value(); ws()
        local d = text:sub(pos, pos); pos = pos + 1
        if d == "]" then return arr elseif d ~= "," then err("expected ',' or ']'") end
      end
    elseif c == '"' then return str()
    elseif text:sub(pos, pos + 3) == "true" then pos = pos + 4; return true
    elseif text:sub(pos, pos + 4) == "false" then pos = pos + 5; return false
    elseif text:sub(pos, pos + 3) == "null" then pos = pos + 4; return nil
    else
      local num = text:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      if not num or num == "" then err("unexpected character") end
      pos = pos + #num
      return tonumber(num)
    end
  end
  return value()
end

-- ------------------------------------------------------------------ helpers
local function project_dir()
  local _, projfn = reaper.EnumProjects(-1)
  if projfn == nil or projfn == "" then return nil end
  return projfn:match("^(.*)[/\\][^/\\]*$")
end

local function track_named(name)
  for i = 0, reaper.CountTracks(0) - 1 do
    local tr = reaper.GetTrack(0, i)
    local _, tname = reaper.GetSetMediaTrackInfo_String(tr, "P_NAME", "", false)
    if tname == name then return tr end
  end
  local idx = reaper.CountTracks(0)
  reaper.InsertTrackAtIndex(idx, true)
  local tr = reaper.GetTrack(0, idx)
  reaper.GetSetMediaTrackInfo_String(tr, "P_NAME", name, true)
  return tr
end

-- REAPER's source types for what the manifest holds (GetMediaSourceType): audio stems, MIDI files.
local AUDIO_TYPES = { WAVE = true, FLAC = true, VORBIS = true, MP3 = true, AIFF = true }

-- Open one file as REAPER media; returns source, length in seconds, or nil and why.
local function open_source(file, want_midi, position)
  local h = io.open(file, "rb")
  if h == nil then return nil, "missing or unreadable" end
  h:close()
  local source = reaper.PCM_Source_CreateFromFile(file)
  if source == nil then return nil, "REAPER cannot open it" end
  local kind = reaper.GetMediaSourceType(source, "")
  local ok_kind
  if want_midi then ok_kind = kind == "MIDI" else ok_kind = AUDIO_TYPES[kind] == true end
  if not ok_kind then
    if reaper.PCM_Source_Destroy then reaper.PCM_Source_Destroy(source) end
    return nil, ("REAPER reads it as '%s', not %s"):format(tostring(kind), want_midi and "MIDI" or "audio")
  end
  local length, in_qn = reaper.GetMediaSourceLength(source)
  if length == nil or length <= 0 then
    if reaper.PCM_Source_Destroy then reaper.PCM_Source_Destroy(source) end
    return nil, "it holds no media (length 0)"
  end
  if in_qn then -- MIDI sources may report quarter notes: measure them on the project's tempo map
    local qn = reaper.TimeMap2_timeToQN(0, position)
    length = reaper.TimeMap2_QNToTime(0, qn + length) - position
  end
  return source, length
end

-- The fixed lane a new take goes to: 0 on a track without items, else one past the last lane.
local function new_lane(track)
  if reaper.GetMediaTrackInfo_Value(track, "I_FREEMODE") ~= 2 then
    reaper.SetMediaTrackInfo_Value(track, "I_FREEMODE", 2)
  end
  if reaper.CountTrackMediaItems(track) == 0 then return 0 end
  return math.floor(reaper.GetMediaTrackInfo_Value(track, "I_NUMFIXEDLANES") + 0.5)
end

-- Lanes of older items that overlap [from, to) stop playing; the new lane plays along with the rest.
local function play_newest(track, lane, from, to)
  for i = 0, reaper.CountTrackMediaItems(track) - 1 do
    local item = reaper.GetTrackMediaItem(track, i)
    local other = math.floor(reaper.GetMediaItemInfo_Value(item, "I_FIXEDLANE") + 0.5)
    local pos = reaper.GetMediaItemInfo_Value(item, "D_POSITION")
    local len = reaper.GetMediaItemInfo_Value(item, "D_LENGTH")
    if other ~= lane and pos < to and pos + len > from then
      reaper.SetMediaTrackInfo_Value(track, "C_LANEPLAYS:" .. other, 0)
    end
  end
  reaper.SetMediaTrackInfo_Value(track, "C_LANEPLAYS:" .. lane, 2)
end

local function place(track, source, length, position, label)
  local lane = new_lane(track)
  if lane + 1 > reaper.GetMediaTrackInfo_Value(track, "I_NUMFIXEDLANES") then
    reaper.SetMediaTrackInfo_Value(track, "I_NUMFIXEDLANES", lane + 1)
  end
  reaper.GetSetMediaTrackInfo_String(track, "P_LANENAME:" .. lane, label, true)
  local item = reaper.AddMediaItemToTrack(track)
  local take = reaper.AddTakeToMediaItem(item)
  reaper.SetMediaItemTake_Source(take, source)
  reaper.SetMediaItemInfo_Value(item, "D_POSITION", position)
  reaper.SetMediaItemInfo_Value(item, "D_LENGTH", length)
  reaper.SetMediaItemInfo_Value(item, "I_FIXEDLANE", lane)
  reaper.GetSetMediaItemTakeInfo_String(take, "P_NAME", label, true)
  play_newest(track, lane, position, position + length)
end

-- Every file of one take, opened; nil and the problems when any cannot be read (then nothing is placed).
local function open_take(dir, take, position)
  local files, problems = {}, {}
  local function add(group, want_midi, suffix)
    if type(group) ~= "table" then return end
    local stems = {}
    for stem in pairs(group) do stems[#stems + 1] = stem end
    table.sort(stems) -- the same track order every time
    for _, stem in ipairs(stems) do
      local rel = group[stem]
      if type(rel) ~= "string" or rel == "" or rel:find("%.%.") or rel:match("^[/\\]") or rel:match("^%a:") then
        problems[#problems + 1] = ("%s %s: %q is not a file inside the project"):format(take.take, stem, tostring(rel))
      else
        local file = dir .. "/" .. rel
        local source, length = open_source(file, want_midi, position)
        if source == nil then
          problems[#problems + 1] = ("%s %s: %s: %s"):format(take.take, stem, file, length)
        else
          files[#files + 1] = { track = "dr2 " .. stem .. suffix, source = source, length = length,
                                label = take.take .. " " .. stem .. suffix }
        end
      end
    end
  end
  add(take.files, false, "")
  add(take.midi, true, " MIDI")
  if #problems > 0 then
    for _, f in ipairs(files) do
      if reaper.PCM_Source_Destroy then reaper.PCM_Source_Destroy(f.source) end
    end
    return nil, problems
  end
  return files
end

-- ------------------------------------------------------------------ main
local function main()
  local dir = project_dir()
  if dir == nil then
    reaper.ShowMessageBox("Save the project first: dr2studio writes into the project folder.", "dr2studio", 0)
    return
  end
  local f = io.open(dir .. "/dr2studio.json", "rb")
  if f == nil then return end -- no takes yet
  local text = f:read("a")
  f:close()
  local ok, manifest = pcall(json_decode, text)
  if not ok or type(manifest) ~= "table" or type(manifest.takes) ~= "table" then
    reaper.ShowMessageBox("Cannot read dr2studio.json: " .. tostring(manifest), "dr2studio", 0)
    return
  end
  local _, done_list = reaper.GetProjExtState(0, SECTION, "imported")
  local done = {}
  for name in (done_list or ""):gmatch("[^\n]+") do done[name] = true end
  local added, failed = 0, {}
  reaper.Undo_BeginBlock()
  reaper.PreventUIRefresh(1)
  for _, take in ipairs(manifest.takes) do
    if type(take) == "table" and type(take.take) == "string" and not done[take.take] and type(take.files) == "table" then
      -- schema 2 (docs/manifest.md): position_seconds for every take; schema-1 CLI takes said "position"
      local position = tonumber(take.position_seconds) or tonumber(take.position) or 0
      local files, problems = open_take(dir, take, position)
      if files == nil then
        for _, p in ipairs(problems) do failed[#failed + 1] = p end
      else
        for _, file in ipairs(files) do
          place(track_named(file.track), file.source, file.length, position, file.label)
          added = added + 1
        end
        done[take.take] = true
        done_list = (done_list or "") .. take.take .. "\n"
      end
    end
  end
  reaper.SetProjExtState(0, SECTION, "imported", done_list or "")
  reaper.PreventUIRefresh(-1)
  if reaper.UpdateTimeline then reaper.UpdateTimeline() end
  reaper.UpdateArrange()
  reaper.Undo_EndBlock("dr2studio: import " .. added .. " file(s)", -1)
  if #failed > 0 then
    reaper.ShowConsoleMsg("dr2studio: not imported (nothing of these takes was placed):\n  "
      .. table.concat(failed, "\n  ") .. "\n")
  end
end

main()
