-- cxr-triage-routing.lua: Orthanc forwards every chest radiograph it receives to cxr-triage.
--
-- Install: name this file in "LuaScripts" of Orthanc's configuration (a relative path is read from
-- the configuration file's folder) and declare the modality "cxr-triage" in "DicomModalities";
-- orthanc.json next to this file does both. Orthanc's Lua scripts share one global state: if the
-- site already defines OnStoredInstance, OnJobSuccess or OnJobFailure in another script, the last
-- script loaded wins, so merge them into one function each.
--
-- Forwarded, on receipt (OnStoredInstance), to the modality "cxr-triage":
--   * SOP Class CR Image Storage, or Digital X-Ray Image Storage For Presentation / For Processing;
--   * and BodyPartExamined naming the chest (the words cxr-triage itself accepts, see
--     dicom_io/checks.py), or empty or absent: many CR/DX modalities leave it empty. cxr-triage
--     then decides from the descriptions and the image, and lists what is not a chest as such
--     rather than leaving a chest image unread.
-- Never forwarded:
--   * any other SOP Class (CT, MR, SR, Secondary Capture, ...). This is what keeps cxr-triage's
--     own output out of a loop: its report (SR) and heat map (Secondary Capture) come back into
--     the same study, by DICOM or DICOMweb;
--   * anything stored over DICOM by cxr-triage's AE title (the AET of the modality, which cxr-triage
--     also calls with: TRIAGE_DICOM_AE_TITLE): a second guard, should it ever send a radiograph back.
--
-- Delivery: one Orthanc job per instance (POST /modalities/cxr-triage/store, asynchronous).
-- Unlike SendToModality(), whose Lua job ends "Success" even when the C-STORE failed (Orthanc
-- 1.10), a failed job shows in Orthanc's job list and calls OnJobFailure. The instance is then kept
-- and sent again as soon as a later forward succeeds (cxr-triage answers again), MAX_ATTEMPTS
-- times at most. That backlog is held in memory: an Orthanc restart forgets it (re-send the
-- study from Orthanc Explorer, or POST /modalities/cxr-triage/store).
--
-- Privacy: log lines (Orthanc's log, "Lua says: ...") carry Orthanc instance ids, never patient data.

local MODALITY = 'cxr-triage'  -- the id in "DicomModalities"
local MAX_ATTEMPTS = 10        -- sends of one instance before giving up (then only the log says so)

local RADIOGRAPH_SOP_CLASSES = {
  ['1.2.840.10008.5.1.4.1.1.1'] = true,      -- Computed Radiography Image Storage
  ['1.2.840.10008.5.1.4.1.1.1.1'] = true,    -- Digital X-Ray Image Storage - For Presentation
  ['1.2.840.10008.5.1.4.1.1.1.1.1'] = true,  -- Digital X-Ray Image Storage - For Processing
}

-- Matched anywhere in BodyPartExamined, as cxr-triage does (e.g. "CHEST", "THORAX", "CHEST_PA").
local CHEST_WORDS = { 'CHEST', 'THORAX', 'LUNG', 'CXR', 'TORAX', 'POUMON', 'BRUST' }

-- Calling AE titles of cxr-triage: the AET configured for the modality, read on first use (so the
-- configuration is the one place to change it). Add others here should cxr-triage call with another.
local OWN_AETS = {}
local modalityAetLearnt = false

local inFlight = {}  -- Orthanc job id -> { instance = instance id, attempts = sends so far }
local backlog = {}   -- instance id -> sends so far, for instances whose last send failed

local function Log(message)
  print('cxr-triage routing: ' .. message)
end

local function Trim(value)
  return (string.gsub(tostring(value or ''), '^%s*(.-)%s*$', '%1'))
end

local function IsChest(bodyPart)
  local text = string.upper(Trim(bodyPart))
  if text == '' then
    return true  -- absent or empty: common on CR/DX, cxr-triage checks the rest
  end
  for _, word in ipairs(CHEST_WORDS) do
    if string.find(text, word, 1, true) then
      return true
    end
  end
  return false
end

local function LearnModalityAet()
  if modalityAetLearnt then
    return
  end
  local ok, answer = pcall(RestApiGet, '/modalities/' .. MODALITY .. '/configuration')
  if ok and answer then
    local aet = Trim(ParseJson(answer)['AET'])
    if aet ~= '' then
      OWN_AETS[aet] = true
    end
    modalityAetLearnt = true
  else
    Log('modality "' .. MODALITY .. '" is not configured (DicomModalities)')
  end
end

local function IsFromCxrTriage(origin)
  return origin['RequestOrigin'] == 'DicomProtocol' and OWN_AETS[Trim(origin['RemoteAet'])] == true
end

local function Failed(instanceId, attempts)
  if attempts >= MAX_ATTEMPTS then
    Log('gave up forwarding instance ' .. instanceId .. ' after ' .. attempts .. ' attempts')
  else
    backlog[instanceId] = attempts
  end
end

local function Send(instanceId, attempts)
  local body = DumpJson({ Resources = { instanceId }, Asynchronous = true }, true)
  local ok, answer = pcall(RestApiPost, '/modalities/' .. MODALITY .. '/store', body)
  if ok and answer then
    inFlight[ParseJson(answer)['ID']] = { instance = instanceId, attempts = attempts + 1 }
  else
    Log('could not create the job forwarding instance ' .. instanceId)
    Failed(instanceId, attempts + 1)
  end
end

function OnStoredInstance(instanceId, tags, metadata, origin)
  if not RADIOGRAPH_SOP_CLASSES[Trim(tags['SOPClassUID'])] or not IsChest(tags['BodyPartExamined']) then
    return  -- silently: a PACS receives many of these
  end
  LearnModalityAet()
  if IsFromCxrTriage(origin) then
    Log('not forwarding instance ' .. instanceId .. ': it came from cxr-triage')
    return
  end
  Log('forwarding instance ' .. instanceId)
  Send(instanceId, 0)
end

-- Orthanc runs Lua callbacks one at a time: these come after Send() has recorded the job.
function OnJobFailure(jobId)
  local job = inFlight[jobId]
  if job then
    inFlight[jobId] = nil
    Log('forwarding instance ' .. job.instance .. ' failed (attempt ' .. job.attempts .. ', job ' .. jobId .. ')')
    Failed(job.instance, job.attempts)
  end
end

function OnJobSuccess(jobId)
  if inFlight[jobId] then
    inFlight[jobId] = nil
    -- cxr-triage takes instances again: send what failed before.
    local pending = backlog
    backlog = {}
    for instanceId, attempts in pairs(pending) do
      Log('forwarding instance ' .. instanceId .. ' again')
      Send(instanceId, attempts)
    end
  end
end
