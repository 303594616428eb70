-- dr2studio: import new takes from the project's dr2studio.json into REAPER.
--
-- Install: Actions > Show action list > New action > Load ReaScript... (this file). Copy its
-- command id (e.g. _RS1234abcd...) and either bind it to a key or let REAPER's OSC control surface
-- trigger it: the dr2studio bridge example client sends /action/_RS... when a job is done.
--
-- What it does: reads <project folder>/dr2studio.json (written by `dr2studio bridge` and
-- `dr2studio stems`), and for every take not imported before (remembered in the project's
-- ExtState), puts each stem file on a track named "dr2 <stem>" at the take's position_seconds
-- (CLI and bridge takes alike; the schema is in docs/manifest.md).
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

local function place(track, file, position, label)
  local source = reaper.PCM_Source_CreateFromFile(file)
  if source == nil then return false end
  local item = reaper.AddMediaItemToTrack(track)
  local take = reaper.AddTakeToMediaItem(item)
  reaper.SetMediaItemTake_Source(take, source)
  local length = reaper.GetMediaSourceLength(source)
  reaper.SetMediaItemInfo_Value(item, "D_POSITION", position)
  reaper.SetMediaItemInfo_Value(item, "D_LENGTH", length)
  reaper.GetSetMediaItemTakeInfo_String(take, "P_NAME", label, true)
  return true
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
  local added = 0
  reaper.Undo_BeginBlock()
  reaper.PreventUIRefresh(1)
  for _, take in ipairs(manifest.takes) do
    if type(take) == "table" and take.take and not done[take.take] and type(take.files) == "table" then
      -- schema 2 (docs/manifest.md): position_seconds for every take; schema-1 CLI takes said "position"
      local position = tonumber(take.position_seconds) or tonumber(take.position) or 0
      for stem, rel in pairs(take.files) do
        local file = dir .. "/" .. rel
        if place(track_named("dr2 " .. stem), file, position, take.take .. " " .. stem) then added = added + 1 end
      end
      done[take.take] = true
      done_list = (done_list or "") .. take.take .. "\n"
    end
  end
  reaper.SetProjExtState(0, SECTION, "imported", done_list or "")
  reaper.PreventUIRefresh(-1)
  reaper.UpdateArrange()
  reaper.Undo_EndBlock("dr2studio: import " .. added .. " stem(s)", -1)
end

main()
